// The public API with trainer shards in GPU memory (JobConfig.cuda_device): the demo-moe job
// (fused qkv / gate_up, FP8 block quantization, packing gathers) runs twice through real
// Controller, Senders and Receivers over tcp;ofi_rxm on loopback, once from host shards and once
// from the same values in CUDA memory; every received byte of every step must match. Skips
// itself without a GPU (CI); scripts/gpu-tests.sh runs it on one.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "weightcast/api/weightcast.h"
#include "weightcast/core/dtype.h"
#include "weightcast/exec/memory.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast {
namespace {

constexpr int kSteps = 3;

std::string source_dir() {
  const char* s = std::getenv("WC_SOURCE_DIR");
  return s ? s : WC_SOURCE_DIR;
}

// Finite BF16 values that differ per tensor, element and step.
std::vector<std::byte> shard_bytes(size_t tensor, uint64_t bytes, int step) {
  std::vector<std::byte> v(bytes);
  for (uint64_t i = 0; i + 1 < bytes; i += 2) {
    const float x =
        static_cast<float>(static_cast<int64_t>(
                               (i / 2 * 37 + tensor * 11 + static_cast<uint64_t>(step) * 5) % 401) -
                           200) *
        0.0625f;
    uint32_t u = 0;
    std::memcpy(&u, &x, 4);
    const uint16_t b = static_cast<uint16_t>(u >> 16);
    std::memcpy(&v[i], &b, 2);
  }
  return v;
}

// Every receiver's tensors after each step: [step][receiver][tensor] -> bytes.
using Received = std::vector<std::vector<std::vector<std::vector<std::byte>>>>;

// `staging`: the plan's staging watermark per sender (0: the planner's default); kTight is the
// tightest the demo's gathers allow (`weightcast plan --builtin demo-moe --staging-mb 1.75`).
constexpr uint64_t kTight = 1792 << 10;
api::JobConfig demo_job(double deadline_s, uint64_t staging = 0) {
  const std::string dir = source_dir() + "/configs/demo-moe";
  api::JobConfig job;
  job.trainer_spec = dir + "/trainer.json";
  job.inference_spec = dir + "/inference.json";
  job.topology = dir + "/topology.json";
  job.deadline_s = deadline_s;
  // Small units packed into gathers (the built-in topology's gather cost packs none), so the
  // trainers' collective runs from GPU shards too.
  job.plan_file =
      ::testing::TempDir() + "demo-moe-packed-" + std::to_string(staging) + ".plan.json";
  auto in = spec::load_inputs(job.trainer_spec, job.inference_spec, job.topology);
  EXPECT_TRUE(in) << in.status().message();
  plan::Options o;
  o.gather_cost_us = 0;
  if (staging) o.staging_watermark = staging;
  auto p = in ? plan::make_plan(*in, o) : Result<plan::Plan>(in.status());
  EXPECT_TRUE(p && !p->gathers.empty()) << (p ? "no gathers" : p.status().message());
  if (p) {
    EXPECT_TRUE(plan::save_json(*p, job.plan_file));
  }
  return job;
}

// `receivers_on_gpu`: the receivers' tensors are CUDA memory (read back after each step), and
// `modes` gets what each receiver's WaitStats said.
Received run_job(int cuda_device, uint64_t staging = 0, bool receivers_on_gpu = false,
                 std::vector<std::string>* modes = nullptr, const std::string& backend = "fabric",
                 uint64_t* in_place = nullptr) {
  api::JobConfig job = demo_job(60, staging);
  job.backend = backend;
  auto ctl = api::Controller::start(job);
  EXPECT_TRUE(ctl) << ctl.status().message();
  if (!ctl) return {};
  Received got(kSteps + 1, std::vector<std::vector<std::vector<std::byte>>>(ctl->receivers()));
  if (modes) modes->assign(ctl->receivers(), "");
  std::vector<std::thread> recv_threads;
  std::vector<std::string> errors(ctl->receivers());
  for (uint32_t r = 0; r < ctl->receivers(); ++r)
    recv_threads.emplace_back([&, r] {
      api::JobConfig rjob = job;
      rjob.cuda_device = receivers_on_gpu ? 0 : -1;
      auto rc = api::Receiver::create(rjob, r);
      if (!rc) return void(errors[r] = rc.status().message());
      std::vector<std::vector<std::byte>> bufs;
      std::vector<exec::Buffer> dev;
      const auto infos = rc->tensors();
      bufs.reserve(infos.size());
      for (const api::TensorInfo& t : infos) {
        bufs.emplace_back(t.bytes);
        void* target = bufs.back().data();
        if (receivers_on_gpu) {
          auto b = exec::Buffer::allocate(exec::MemoryKind::kCuda, t.bytes, 0);
          if (!b) return void(errors[r] = b.status().message());
          dev.push_back(std::move(b).value());
          target = dev.back().data();
        }
        if (Status s = rc->register_tensor(t.name, target, t.bytes, t.scales); !s)
          return void(errors[r] = s.message());
      }
      if (Status s = rc->publish(); !s) return void(errors[r] = s.message());
      for (int step = 1; step <= kSteps; ++step) {
        auto w = rc->wait(static_cast<uint64_t>(step));
        if (!w) return void(errors[r] = w.status().message());
        if (modes && step == kSteps) (*modes)[r] = w->mode;
        for (size_t t = 0; t < dev.size(); ++t)  // what the engine would read: the GPU's bytes
          if (Status s = dev[t].copy_to_host(bufs[t].data(), bufs[t].size()); !s)
            return void(errors[r] = s.message());
        got[step][r] = bufs;
      }
    });
  job.cuda_device = cuda_device;
  std::vector<api::Sender> senders;
  std::vector<std::vector<exec::Buffer>> shards(ctl->senders());
  for (uint32_t s = 0; s < ctl->senders(); ++s) {
    auto snd = api::Sender::create(job, s);
    EXPECT_TRUE(snd) << snd.status().message();
    if (!snd) return {};
    for (const api::TensorInfo& t : snd->tensors()) {
      auto b = exec::Buffer::allocate(
          cuda_device >= 0 ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost, t.bytes,
          std::max(cuda_device, 0));
      EXPECT_TRUE(b) << b.status().message();
      if (!b) return {};
      shards[s].push_back(std::move(b).value());
      Status st = snd->register_tensor(t.name, shards[s].back().data(), t.bytes);
      EXPECT_TRUE(st) << t.name << ": " << st.message();
    }
    senders.push_back(std::move(snd).value());
  }
  for (auto& s : senders) EXPECT_TRUE(s.prepare());
  for (int step = 1; step <= kSteps; ++step) {
    for (uint32_t s = 0; s < senders.size(); ++s) {
      const auto infos = senders[s].tensors();
      for (size_t t = 0; t < infos.size(); ++t) {
        const auto v = shard_bytes(s * 1000 + t, infos[t].bytes, step);
        EXPECT_TRUE(shards[s][t].copy_from_host(v.data(), v.size()));
      }
    }
    std::vector<std::thread> ts;
    std::atomic<uint64_t> placed{0};
    for (auto& s : senders)
      ts.emplace_back([&s, &placed, step] {
        auto r = s.push(static_cast<uint64_t>(step));
        EXPECT_TRUE(r) << r.status().message();
        if (r) placed += r->in_place_projections;
      });
    for (auto& t : ts) t.join();
    if (in_place) *in_place += placed;
  }
  for (auto& t : recv_threads) t.join();
  for (uint32_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "receiver " << r;
  return got;
}

bool have_gpu() { return exec::cuda_built() && exec::cuda_devices() > 0; }

// Every received byte of every step equal, and more than a MiB of it.
void expect_same(const Received& host, const Received& dev) {
  ASSERT_EQ(host.size(), dev.size());
  uint64_t compared = 0;
  for (int step = 1; step <= kSteps; ++step)
    for (size_t r = 0; r < host[step].size(); ++r) {
      ASSERT_EQ(host[step][r].size(), dev[step][r].size());
      ASSERT_FALSE(host[step][r].empty()) << "receiver " << r << " got nothing";
      for (size_t t = 0; t < host[step][r].size(); ++t) {
        EXPECT_EQ(host[step][r][t], dev[step][r][t])
            << "step " << step << " receiver " << r << " tensor " << t;
        compared += host[step][r][t].size();
      }
    }
  // Steps differ (the values change), so equal bytes are not two copies of one stale buffer.
  EXPECT_NE(host[1], host[2]);
  EXPECT_GT(compared, 1u << 20);
}

TEST(ApiCuda, DeviceShardsDeliverTheSameBytesAsHostShards) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  expect_same(run_job(-1), run_job(0));
}

// A 1.75 MiB staging watermark, the least the demo's largest gather phase (1 MiB) leaves room
// in: 4 gather phases, and a 0.5 MiB projection ring the GPU's batches wrap around many times a
// step (a batch ends where the ring wraps; a slot is reused only once its
// writes completed). The bytes must be those of the roomy plan from host shards.
TEST(ApiCuda, ATightStagingRingDeliversTheSameBytes) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  expect_same(run_job(-1), run_job(0, kTight));
}

// Receivers whose tensors are GPU memory, over tcp;ofi_rxm (no FI_HMEM): the writes land in a
// pinned host area and are copied to the GPU per sender before wait() returns. The bytes read
// back from the GPUs are those of host receivers; trainer shards on the GPU too.
TEST(ApiCuda, GpuReceiverTensorsGetTheSameBytesStaged) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  std::vector<std::string> modes;
  expect_same(run_job(-1), run_job(0, 0, true, &modes));
  for (const std::string& m : modes) EXPECT_EQ(m, "staged");
}

// The same-host backend: trainer shards and projection outputs written from the GPU into the
// receivers' GPU tensors through CUDA IPC (peers of one process here: the demo test runs it
// between processes), nothing staged; and with a tight staging ring the GPU wraps. Projections
// write straight into the receivers' tensors (in place), or, with WEIGHTCAST_NO_IN_PLACE, go
// through staging and a copy: the same bytes either way.
TEST(ApiCuda, IpcWritesGpuToGpuTheSameBytes) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  std::vector<std::string> modes;
  const Received host = run_job(-1);
  uint64_t in_place = 0;
  expect_same(host, run_job(0, 0, true, &modes, "ipc", &in_place));
  for (const std::string& m : modes) EXPECT_EQ(m, "gpu");
  EXPECT_GT(in_place, 0u) << "no projection was written in place";
  ::setenv("WEIGHTCAST_NO_IN_PLACE", "1", 1);
  in_place = 0;
  expect_same(host, run_job(0, 0, true, nullptr, "ipc", &in_place));
  ::unsetenv("WEIGHTCAST_NO_IN_PLACE");
  EXPECT_EQ(in_place, 0u);
  in_place = 0;
  expect_same(host, run_job(0, kTight, true, nullptr, "ipc", &in_place));
  EXPECT_GT(in_place, 0u);
  expect_same(host, run_job(-1, 0, true, nullptr, "ipc"));  // host shards to GPU tensors
}

// "never": GPU memory the transport cannot write is refused by name, nothing staged silently.
TEST(ApiCuda, GpuReceiverTensorsWithoutStagingAreRefusedByName) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  api::JobConfig job = demo_job(5);
  auto ctl = api::Controller::start(job);
  ASSERT_TRUE(ctl) << ctl.status().message();
  job.cuda_device = 0;
  job.receiver_staging = "never";
  auto rc = api::Receiver::create(job, 0);
  ASSERT_TRUE(rc) << rc.status().message();
  const api::TensorInfo t = rc->tensors().at(0);
  auto dev = exec::Buffer::allocate(exec::MemoryKind::kCuda, t.bytes);
  ASSERT_TRUE(dev);
  Status s = rc->register_tensor(t.name, dev->data(), t.bytes, t.scales);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("bind_tensor('" + t.name + "')"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("FI_HMEM"), std::string::npos) << s.message();
  std::vector<std::byte> host(t.bytes);
  s = rc->register_tensor(t.name, host.data(), t.bytes, t.scales);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("a host pointer, but JobConfig.cuda_device is 0"), std::string::npos)
      << s.message();
}

TEST(ApiCuda, APointerOfTheWrongKindIsRefused) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here (scripts/gpu-tests.sh runs this on one)";
  api::JobConfig job = demo_job(5);
  auto ctl = api::Controller::start(job);
  ASSERT_TRUE(ctl) << ctl.status().message();
  job.cuda_device = 0;
  auto gpu_sender = api::Sender::create(job, 0);
  ASSERT_TRUE(gpu_sender) << gpu_sender.status().message();
  const api::TensorInfo t = gpu_sender->tensors().at(0);
  std::vector<std::byte> host(t.bytes);
  Status s = gpu_sender->register_tensor(t.name, host.data(), t.bytes);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("the pointer is host memory, but this rank's shards are on the GPU"),
            std::string::npos)
      << s.message();
  job.cuda_device = -1;
  auto host_sender = api::Sender::create(job, 1);
  ASSERT_TRUE(host_sender) << host_sender.status().message();
  const api::TensorInfo t1 = host_sender->tensors().at(0);
  auto dev = exec::Buffer::allocate(exec::MemoryKind::kCuda, t1.bytes);
  ASSERT_TRUE(dev);
  s = host_sender->register_tensor(t1.name, dev->data(), t1.bytes);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("CUDA device memory, but this rank's shards are in host memory"),
            std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace weightcast
