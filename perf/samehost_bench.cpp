// The same-host update at full model size: a real model's trainer shards (FSDP) and its FP8
// inference replica (EP) all on one GPU, each rank a process of its own, through the public API
// over the ipc backend (CUDA IPC, GPU to GPU); and, in the same run, the device-to-device copy
// limit. perf/samehost.sh runs it beside the colocated torch baseline (perf/colocated_baseline.py)
// and passes the baseline's GB/s in, so the ratios come from one run on one machine.
//   samehost_bench [--model DIR] [--fsdp N] [--ep N] [--steps N] [--layers N] [--device cuda|host]
//                  [--backend ipc|fabric] [--baseline-gbps X] [--no-in-place]
//                  [--trainer-gpus N] [--inference-gpu G] [--gathers host|nccl]
// (Two GPUs: --inference-gpu 1 puts the replica on GPU 1, so every write crosses NVLink, and the
// peer-copy limit is measured too; --trainer-gpus 2 --gathers nccl gathers across both GPUs.)
// --layers N keeps the first N layers (a quick check on a small machine); --device host puts
// both ends in host memory (the path this CPU-only machine can run). Layer 0's bytes are checked
// exactly on every receiver after the last step (against plan::reference_tensor, from trainer
// shards holding the verifier's pattern); the other layers carry random bytes and are only
// checked to have landed (no tensor still all zeros).
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "harness.h"
#include "weightcast/api/weightcast.h"
#include "weightcast/core/box.h"
#include "weightcast/exec/binding.h"
#include "weightcast/exec/memory.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/generate.h"

#if WEIGHTCAST_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace weightcast;  // NOLINT
using nlohmann::json;

namespace {

struct Args {
  std::string model = std::string(WC_SOURCE_DIR) + "/configs/qwen3-30b-a3b";
  int fsdp = 4, ep = 2, steps = 3, layers = -1;
  std::string device = "cuda", backend = "ipc";
  double baseline_gbps = 0;
  bool no_in_place = false;
  // Two GPUs (issue 15): trainer rank s on GPU s % trainer_gpus, the receivers on inference_gpu;
  // gathers on the host collective or NCCL (one GPU per trainer rank).
  int trainer_gpus = 1, inference_gpu = 0;
  std::string gathers = "host";
};

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "samehost_bench: %s\n", m.c_str());
  std::fflush(stderr);
  _exit(1);
}

json load(const std::string& p) {
  std::ifstream f(p);
  if (!f) die("cannot read " + p);
  return json::parse(f);
}

void cut_layers(json& spec, int layers) {
  if (layers < 0) return;
  for (json& p : spec["params"])
    if (p.contains("for") && p["for"].contains("i")) p["for"]["i"] = json::array({0, layers});
}

// The model's specs on one host, made by `weightcast spec`'s generator from its config.json: the
// trainer as FSDP `fsdp`, the inference side as one replica of `ep` DP-attention ranks with the
// experts EP over them (FP8), on the GPU slots after the trainer's.
void write_specs(const Args& a, const std::string& dir) {
  auto opts = spec::parse_generate_args(
      {"--trainer", "fsdp=" + std::to_string(a.fsdp), "--inference", "dp=" + std::to_string(a.ep),
       "--expert-parallel", "--fp8", "experts", "--single-host", "local", "--gpus-per-host", "16",
       "--name", std::filesystem::path(a.model).filename().string()});
  if (!opts) die(opts.status().message());
  auto g = spec::generate_specs(load(a.model + "/config.json"), *opts);
  if (!g) die(g.status().message());
  cut_layers(g->trainer, a.layers);
  cut_layers(g->inference, a.layers);
  std::ofstream(dir + "/trainer.json") << g->trainer.dump(1);
  std::ofstream(dir + "/inference.json") << g->inference.dump(1);
  std::ofstream(dir + "/topology.json") << g->topology.dump(1);
}

constexpr uint64_t kAlign = 256;
uint64_t aligned(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// One allocation holding every tensor of a rank, each at a 256-byte aligned offset.
struct Arena {
  exec::Buffer buf;
  std::vector<uint64_t> off;
};
Arena allocate(const std::vector<api::TensorInfo>& infos, bool cuda, int device) {
  Arena a;
  uint64_t total = 0;
  for (const auto& t : infos) {
    a.off.push_back(total);
    total += aligned(t.bytes);
  }
  auto b = exec::Buffer::allocate(cuda ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost,
                                  std::max<uint64_t>(total, 1), std::max(device, 0));
  if (!b) die(b.status().message());
  a.buf = std::move(b).value();
  return a;
}

// Trainer bytes: BF16 values in [-2, 2), the same on every run.
void fill(exec::Buffer& b, bool cuda, uint32_t seed) {
  std::vector<uint16_t> pattern(32 << 20);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-2.f, 2.f);
  for (auto& v : pattern) {
    const float x = d(rng);
    uint32_t u;
    std::memcpy(&u, &x, 4);
    v = static_cast<uint16_t>(u >> 16);
  }
  const uint64_t chunk = pattern.size() * 2;
  for (uint64_t off = 0; off < b.size(); off += chunk) {
    const uint64_t n = std::min(chunk, b.size() - off);
    Status s = cuda ? exec::copy_host_to_device(b.data() + off, pattern.data(), n, 0)
                    : (std::memcpy(b.data() + off, pattern.data(), n), Status::ok());
    if (!s) die(s.message());
  }
}

// The layer whose bytes are checked exactly: its trainer shards hold the verifier's pattern
// (plan::pattern_value of step 1, every step), the rest random bytes; every receiver compares
// its tensors of this layer with plan::reference_tensor, built from the specs alone.
constexpr const char* kChecked = ".layers.0.";
bool checked(const std::string& name) { return name.find(kChecked) != std::string::npos; }

// The job's inputs and plan as the benchmark's processes see them (loaded before they fork).
struct Job {
  spec::Inputs in;
  plan::Plan plan;
};

void receiver(api::JobConfig job, uint32_t r, const Args& a, const Job& j) {
  auto rc = api::Receiver::create(job, r);
  if (!rc) die(rc.status().message());
  const auto infos = rc->tensors();
  Arena ar = allocate(infos, a.device == "cuda", job.cuda_device);
  for (size_t k = 0; k < infos.size(); ++k)
    if (Status s = rc->register_tensor(infos[k].name, ar.buf.data() + ar.off[k], infos[k].bytes,
                                       infos[k].scales);
        !s)
      die(s.message());
  if (Status s = rc->publish(); !s) die(s.message());
  for (int step = 1; step <= a.steps; ++step) {
    auto w = rc->wait(static_cast<uint64_t>(step));
    if (!w) die(fmt::format("receiver {} step {}: {}", r, step, w.status().message()));
    if (step == a.steps)
      std::printf("receiver %u: %zu tensors, %.2f GB, mode %s, last wait %.3f s\n", r, infos.size(),
                  static_cast<double>(w->bytes) / 1e9, w->mode.c_str(), w->seconds);
  }
  // The checked layer, byte for byte: tensors matched to the plan's dests by name and kind.
  uint64_t exact = 0;
  size_t tensors = 0;
  for (const plan::DestTensor& dt : j.plan.dests) {
    if (dt.receiver != r) continue;
    const std::string& name = j.plan.dest_names[dt.param];
    if (!checked(name)) continue;
    size_t k = 0;
    while (k < infos.size() && !(infos[k].name == name && infos[k].scales == dt.scale)) ++k;
    if (k == infos.size()) die(fmt::format("receiver {}: no tensor {} to check", r, name));
    const auto ref = plan::reference_tensor(j.in, dt, j.plan.receivers[r], 1);
    std::vector<std::byte> got(infos[k].bytes);
    std::byte* p = ar.buf.data() + ar.off[k];
    if (a.device == "cuda") {
      if (Status s = exec::copy_device_to_host(got.data(), p, got.size(), 0); !s) die(s.message());
    } else {
      std::memcpy(got.data(), p, got.size());
    }
    if (got != ref) {
      size_t i = 0;
      while (i < got.size() && i < ref.size() && got[i] == ref[i]) ++i;
      die(fmt::format("receiver {}: tensor {}{} differs from the reference at byte {} of {}", r,
                      name, dt.scale ? " (scales)" : "", i, ref.size()));
    }
    exact += got.size();
    ++tensors;
  }
  if (tensors == 0) die(fmt::format("receiver {}: no tensor of the checked layer", r));
  std::printf("receiver %u: %zu tensors of %s (%.2f GB) equal to the reference\n", r, tensors,
              kChecked, static_cast<double>(exact) / 1e9);
  // Every tensor landed: none still holds only the zeros it was allocated with (its first 256 B).
  size_t empty = 0;
  std::vector<std::byte> head(kAlign);
  for (size_t k = 0; k < infos.size(); ++k) {
    const uint64_t n = std::min<uint64_t>(kAlign, infos[k].bytes);
    std::byte* p = ar.buf.data() + ar.off[k];
    if (a.device == "cuda") {
      if (Status s = exec::copy_device_to_host(head.data(), p, n, 0); !s) die(s.message());
    } else {
      std::memcpy(head.data(), p, n);
    }
    bool zero = true;
    for (uint64_t b = 0; b < n; ++b) zero = zero && head[b] == std::byte{0};
    empty += zero;
  }
  if (empty) die(fmt::format("receiver {}: {} tensors still all zeros", r, empty));
  std::fflush(stdout);
  _exit(0);
}

// What a sender answers per step: push seconds, shard bytes, then where the push's time went
// (PushStats: ready, gather, projection, ring wait, drain, post), its writes, and its
// projections written in place (straight into the receivers' tensors).
constexpr int kReply = 10;
const char* const kParts[] = {"ready", "gather", "project", "ring", "drain", "post"};

// Pushes each step when the driver says go (a byte on `go`), answers with its push seconds and
// the bytes of the shards it holds.
void sender(api::JobConfig job, uint32_t s, const Args& a, int go, int done, const Job& j) {
  auto snd = api::Sender::create(job, s);
  if (!snd) die(snd.status().message());
  const auto infos = snd->tensors();
  const bool cuda = a.device == "cuda";
  Arena ar = allocate(infos, cuda, job.cuda_device);
  fill(ar.buf, cuda, 17 + s);
  // The checked layer's shards: the verifier's pattern, element by element at its global index.
  const exec::SenderLayout layout = exec::sender_layout(j.in, s);
  for (size_t k = 0; k < infos.size(); ++k) {
    if (!checked(infos[k].name)) continue;
    const int param = j.in.trainer.index.at(infos[k].name);
    const exec::ShardSlot& sl = layout.shards.at(layout.by_param.at(param));
    const spec::Param& p = j.in.trainer.params[static_cast<size_t>(param)];
    const uint64_t seed = plan::pattern_seed(p.name);
    const size_t esz = core::dtype_size(p.dtype);
    std::vector<std::byte> host(infos[k].bytes);
    size_t e = 0;
    core::for_each_run(p.shape, sl.box, [&](int64_t off, int64_t len) {
      for (int64_t i = 0; i < len; ++i, ++e)
        core::store_from_float(p.dtype, plan::pattern_value(seed, off + i, 1),
                               host.data() + e * esz);
    });
    if (e * esz != host.size())
      die(fmt::format("{}: shard of {} B, box of {} elements", p.name, host.size(), e));
    std::byte* dst = ar.buf.data() + ar.off[k];
    if (Status st = cuda ? exec::copy_host_to_device(dst, host.data(), host.size(), 0)
                         : (std::memcpy(dst, host.data(), host.size()), Status::ok());
        !st)
      die(st.message());
  }
  for (size_t k = 0; k < infos.size(); ++k)
    if (Status st = snd->register_tensor(infos[k].name, ar.buf.data() + ar.off[k], infos[k].bytes);
        !st)
      die(st.message());
  if (Status st = snd->prepare(); !st) die(st.message());
  uint64_t held = 0;
  for (const auto& t : infos) held += t.bytes;
  for (int step = 1; step <= a.steps; ++step) {
    char c;
    if (read(go, &c, 1) != 1) die("driver gone");
    auto p = snd->push(static_cast<uint64_t>(step));
    if (!p) die(fmt::format("sender {} step {}: {}", s, step, p.status().message()));
    const double v[kReply] = {p->seconds,
                              static_cast<double>(held),
                              p->ready_seconds,
                              p->gather_seconds,
                              p->projection_seconds,
                              p->ring_wait_seconds,
                              p->drain_seconds,
                              p->post_seconds,
                              static_cast<double>(p->writes),
                              static_cast<double>(p->in_place_projections)};
    if (write(done, v, sizeof v) != sizeof v) die("driver gone");
  }
  _exit(0);
}

// Device-to-device copy on GPU 0: bytes copied per second (best of 5 copies of 4 GiB).
// The copy limit: device to device on GPU `from` (from == to), or GPU `from` to GPU `to` (the
// NVLink peer copy), bytes copied per second.
double d2d_gbps(int from = 0, int to = 0) {
#if WEIGHTCAST_HAVE_CUDA
  const size_t n = 4ull << 30;
  void *x = nullptr, *y = nullptr;
  if (cudaSetDevice(to) != cudaSuccess || cudaMalloc(&y, n) != cudaSuccess) return 0;
  if (cudaSetDevice(from) != cudaSuccess || cudaMalloc(&x, n) != cudaSuccess) return 0;
  if (from != to) (void)cudaDeviceEnablePeerAccess(to, 0);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpy(y, x, n, cudaMemcpyDeviceToDevice);
  float best = 1e9f;
  for (int k = 0; k < 5; ++k) {
    cudaEventRecord(e0);
    cudaMemcpy(y, x, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    best = std::min(best, ms);
  }
  cudaFree(x);
  cudaFree(y);
  return static_cast<double>(n) / (best * 1e-3) / 1e9;
#else
  return 0;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"weightcast same-host benchmark (perf/samehost.sh runs it with the baseline)"};
  app.add_option("--model", a.model, "Folder with the model's config.json (specs are generated)");
  app.add_option("--fsdp", a.fsdp, "Trainer ranks (FSDP)");
  app.add_option("--ep", a.ep, "Inference ranks (EP) of the one replica");
  app.add_option("--steps", a.steps, "Steps (the first maps every peer's memory)");
  app.add_option("--layers", a.layers, "Keep the first N layers (-1: all)");
  app.add_option("--device", a.device, "Memory of both ends")
      ->check(CLI::IsMember({"cuda", "host"}));
  app.add_option("--backend", a.backend, "Transport")->check(CLI::IsMember({"ipc", "fabric"}));
  app.add_option("--baseline-gbps", a.baseline_gbps, "The colocated baseline's GB/s, for ratios");
  app.add_option("--trainer-gpus", a.trainer_gpus,
                 "GPUs for the trainers: rank s on GPU s % N (default 1: GPU 0)")
      ->check(CLI::Range(1, 64));
  app.add_option("--inference-gpu", a.inference_gpu, "The GPU the receivers' tensors live on")
      ->check(CLI::Range(0, 63));
  app.add_option("--gathers", a.gathers, "Trainers' gathers: host or nccl (JobConfig.gathers)")
      ->check(CLI::IsMember({"host", "nccl"}));
  app.add_flag("--no-in-place", a.no_in_place,
               "Project into staging and copy (WEIGHTCAST_NO_IN_PLACE), not into the receivers' "
               "tensors");
  CLI11_PARSE(app, argc, argv);
  if (a.no_in_place) ::setenv("WEIGHTCAST_NO_IN_PLACE", "1", 1);  // read by the forked senders
  const std::string dir = std::filesystem::temp_directory_path() / "wc-samehost";
  std::filesystem::create_directories(dir);
  write_specs(a, dir);
  api::JobConfig job;
  job.trainer_spec = dir + "/trainer.json";
  job.inference_spec = dir + "/inference.json";
  job.topology = dir + "/topology.json";
  job.backend = a.backend;
  job.gathers = a.gathers;
  job.deadline_s = 60;
  auto ctl = api::Controller::start(job);
  if (!ctl) die(ctl.status().message());
  Job j;
  {
    auto in = spec::load_inputs(job.trainer_spec, job.inference_spec, job.topology);
    if (!in) die(in.status().message());
    j.in = std::move(in).value();
    plan::Options po;
    po.nccl_gathers = a.gathers == "nccl";  // as the job plans
    po.intra_domain_gathers_only = po.nccl_gathers;
    auto p = plan::make_plan(j.in, po);
    if (!p) die(p.status().message());
    j.plan = std::move(p).value();
  }
  std::printf("samehost: %s, FSDP%d -> one EP%d replica, %s memory over %s\n", a.model.c_str(),
              a.fsdp, a.ep, a.device.c_str(), a.backend.c_str());
  std::fflush(stdout);
  const int dev = a.device == "cuda" ? 0 : -1;
  std::vector<pid_t> kids;
  for (uint32_t r = 0; r < ctl->receivers(); ++r) {
    api::JobConfig rj = job;
    rj.token = ctl->peer_token("inference", r);
    rj.cuda_device = dev < 0 ? -1 : a.inference_gpu;
    const pid_t p = fork();
    if (p == 0) receiver(rj, r, a, j);
    kids.push_back(p);
  }
  std::vector<int> go(ctl->senders()), done(ctl->senders());
  for (uint32_t s = 0; s < ctl->senders(); ++s) {
    int g[2], d[2];
    if (pipe(g) != 0 || pipe(d) != 0) die("pipe");
    api::JobConfig sj = job;
    sj.token = ctl->peer_token("trainer", s);
    sj.cuda_device = dev < 0 ? -1 : static_cast<int>(s) % a.trainer_gpus;
    const pid_t p = fork();
    if (p == 0) sender(sj, s, a, g[0], d[1], j);
    kids.push_back(p);
    go[s] = g[1];
    done[s] = d[0];
  }
  if (auto peers = ctl->wait_for_peers(600); !peers) die(peers.status().message());
  double best = 0;
  for (int step = 1; step <= a.steps; ++step) {
    const double t0 = perf::now_s();
    for (int g : go)
      if (write(g, "g", 1) != 1) die("a sender is gone");
    double bytes = 0, slowest = 0, most[6] = {}, writes = 0, in_place = 0;
    for (int d : done) {
      double v[kReply];
      if (read(d, v, sizeof v) != sizeof v) die("a sender died (its error is above)");
      slowest = std::max(slowest, v[0]);
      bytes += v[1];
      for (int k = 0; k < 6; ++k) most[k] = std::max(most[k], v[2 + k]);
      writes += v[8];
      in_place += v[9];
    }
    const double wall = perf::now_s() - t0;
    // Trainer bytes: what the trainers hold (each BF16 value sent once per step).
    const double gbps = bytes / wall / 1e9;
    std::printf("step %d: %.2f GB of trainer bytes in %.3f s (slowest push %.3f s): %.1f GB/s\n",
                step, bytes / 1e9, wall, slowest, gbps);
    std::printf("  %.0f writes, %.0f projections in place; slowest sender's seconds in:", writes,
                in_place);
    for (int k = 0; k < 6; ++k) std::printf(" %s %.3f", kParts[k], most[k]);
    std::printf("\n");
    std::fflush(stdout);
    if (step > 1 || a.steps == 1) best = std::max(best, gbps);
  }
  int failed = 0;
  for (pid_t p : kids) {
    int st = 0;
    waitpid(p, &st, 0);
    failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  if (failed) die(fmt::format("{} peer process(es) failed", failed));
  std::printf("weightcast: %.1f GB/s (best step after the first)\n", best);
  if (a.device == "cuda") {
    if (a.inference_gpu != 0 || a.trainer_gpus > 1) {  // trainers on GPU 0 write another GPU
      const double peer = d2d_gbps(0, a.inference_gpu);
      perf::ratio("GPU 0 -> GPU peer copy limit", best, peer, "GB/s", "target >= 0.8");
    }
    const double d2d = d2d_gbps();
    perf::ratio("samehost vs device-to-device copy", best, d2d, "GB/s", "the limit");
    if (a.baseline_gbps > 0)
      perf::ratio(a.inference_gpu != 0 ? "two GPUs vs per-tensor NCCL broadcast"
                                       : "samehost vs colocated torch",
                  best, a.baseline_gbps, "GB/s",
                  a.inference_gpu != 0 ? "target >= 5x" : "target >= 4x");
  }
  return 0;
}
