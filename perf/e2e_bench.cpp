// End-to-end update throughput against the raw transport, in one run on this machine.
//   raw:  one-sided 16 MiB writes over the same provider (transport_bw's method), one pair and
//         4 writers x 2 targets (the jobs' processes), from and to one reused buffer; and the
//         4 x 2 run again with every write from and to memory of its own, as a step's writes
//         are (on loopback the "fabric" is memcpy, so a reused buffer that stays in the CPU's
//         cache flatters it);
//   replay: each job's own writes from its plan (sizes, pairs, scale rows) posted at once with
//         nothing of the executor around them: e2e / replay is what the executor costs;
//   e2e:  full steps through the public API (Controller, Senders in this process, Receivers in a
//         child process): bytes of a step over the step's wall time, for
//           copy: a BF16 FSDP4 -> TP2 reshard that is pure zero-copy writes, and
//           moe:  the demo-moe model (fused qkv / gate_up, BF16 -> FP8 block quantization on the
//           CPU);
//   post: time inside the NICs' post calls per write (binding-free re-posting: the plan is bound
//         once, every step only posts).
// Options: --device cuda puts the trainer shards in GPU memory (JobConfig.cuda_device = 0), so
// projections run on the GPU; --scale K multiplies every dimension of demo-moe by K (K = 8 moves
// about 300 MB per step, where bandwidth, not per-operation latency, sets the step time).
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include "harness.h"
#include "weightcast/api/weightcast.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/step_trace.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/sim/measure.h"
#include "weightcast/spec/spec_parser.h"

using namespace weightcast;  // NOLINT
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kSteps = 12;

[[maybe_unused]] double cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

void write_copy_specs(const std::string& dir) {
  std::ofstream(dir + "/trainer.json") << R"js({"format": "weightcast.spec/v1", "role": "trainer",
    "mesh": {"axes": [{"name": "fsdp", "size": 4}], "devices": {"host": "local", "gpus_per_host": 16}},
    "params": [{"name": "w{i}", "for": {"i": [0, 16]}, "shape": [2048, 2048], "dtype": "bf16", "placement": {"fsdp": "S(0)"}}]})js";
  std::ofstream(dir + "/inference.json")
      << R"js({"format": "weightcast.spec/v1", "role": "inference",
    "replicas": {"count": 1, "mesh": {"axes": [{"name": "tp", "size": 2}]}, "devices": {"host": "local", "gpus_per_host": 16, "first_gpu": 8}},
    "params": [{"name": "w{i}", "for": {"i": [0, 16]}, "shape": [2048, 2048], "dtype": "bf16", "placement": {"tp": "S(0)"}, "from": "w{i}"}]})js";
  std::ofstream(dir + "/topology.json")
      << R"js({"format": "weightcast.topology/v1", "hosts": [{"name": "local", "gpus": 16, "nic_gbps": 100}]})js";
}

// demo-moe with every named dimension multiplied by `k` (same structure, k x k the bytes).
void write_scaled_moe(const std::string& dir, int k) {
  const char* env = std::getenv("WC_SOURCE_DIR");  // a checkout elsewhere (the GPU machine)
  const std::string src = std::string(env ? env : WC_SOURCE_DIR) + "/configs/demo-moe/";
  for (const char* f : {"trainer.json", "inference.json", "topology.json"}) {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(src + f));
    if (j.contains("dims"))
      for (auto& [name, v] : j["dims"].items()) v = v.get<int64_t>() * k;
    std::ofstream(dir + "/" + f) << j.dump(1);
  }
}

// --inference-device cuda: the receivers' tensors are GPU memory (staged over tcp).
bool g_receivers_on_gpu = false;

// Receivers of a job, in a child process; reads rendezvous and token from the pipe.
void receivers_child(api::JobConfig job, int fd, uint32_t n) {
  char buf[256] = {};
  if (read(fd, buf, sizeof buf) <= 0) _exit(1);
  std::string s(buf);
  job.rendezvous = s.substr(0, s.find(' '));
  job.token = s.substr(s.find(' ') + 1);
  std::vector<std::thread> ts;
  for (uint32_t r = 0; r < n; ++r)
    ts.emplace_back([&, r] {
      api::JobConfig rjob = job;
      rjob.cuda_device = g_receivers_on_gpu ? 0 : -1;
      auto rc = api::Receiver::create(rjob, r);
      if (!rc) {
        std::fprintf(stderr, "e2e_bench receiver %u: %s\n", r, rc.status().message().c_str());
        _exit(2);
      }
      std::vector<exec::Buffer> bufs;
      for (const api::TensorInfo& t : rc->tensors()) {
        auto b = exec::Buffer::allocate(
            g_receivers_on_gpu ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost,
            std::max<uint64_t>(t.bytes, 1), 0);
        if (!b) {
          std::fprintf(stderr, "e2e_bench receiver %u: %s\n", r, b.status().message().c_str());
          _exit(6);
        }
        bufs.push_back(std::move(b).value());
        if (!rc->register_tensor(t.name, bufs.back().data(), t.bytes, t.scales)) _exit(3);
      }
      if (!rc->publish()) _exit(4);
      for (int step = 1; step <= kSteps; ++step)
        if (!rc->wait(static_cast<uint64_t>(step))) _exit(5);
    });
  for (auto& t : ts) t.join();
  _exit(0);
}

struct E2E {
  double gbps = 0, cpu_us_per_write = 0, proj_ms = 0;
  // Per stage, ms per step: the slowest sender's, averaged over the measured steps.
  double ready = 0, mirror = 0, gather = 0, project = 0, ring = 0, post = 0, drain = 0, push = 0;
  uint64_t bytes = 0, writes = 0;
};

// The planner's options for both jobs (--gather-cost-us); the plan is saved next to the specs
// and the job loads it from there.
plan::Options g_plan_options;

api::JobConfig job_in(const std::string& dir) {
  api::JobConfig job;
  job.trainer_spec = dir + "/trainer.json";
  job.inference_spec = dir + "/inference.json";
  job.topology = dir + "/topology.json";
  job.plan_file = dir + "/plan.json";
  return job;
}

spec::Inputs inputs_of(const std::string& dir) {
  auto in =
      spec::load_inputs(dir + "/trainer.json", dir + "/inference.json", dir + "/topology.json");
  if (!in) {
    std::fprintf(stderr, "e2e_bench: %s\n", in.status().message().c_str());
    std::exit(1);
  }
  return std::move(in).value();
}

plan::Plan plan_of(const std::string& dir) {
  auto p = plan::make_plan(inputs_of(dir), g_plan_options);
  if (!p) {
    std::fprintf(stderr, "e2e_bench: %s\n", p.status().message().c_str());
    std::exit(1);
  }
  return std::move(p).value();
}

// A job's receivers in a child process that waits for the rendezvous on a pipe. Children are
// forked before this process touches CUDA (a forked child cannot use the parent's CUDA state).
struct Child {
  pid_t pid;
  int fd;
};
Child spawn_receivers(const std::string& dir, uint32_t receivers) {
  int pipefd[2];
  if (pipe(pipefd) != 0) std::exit(1);
  const pid_t child = fork();
  if (child == 0) receivers_child(job_in(dir), pipefd[0], receivers);
  return {child, pipefd[1]};
}

E2E run_job(const std::string& dir, Child child, int cuda_device) {
  api::JobConfig job = job_in(dir);
  auto ctl = api::Controller::start(job);
  if (!ctl) {
    std::fprintf(stderr, "%s\n", ctl.status().message().c_str());
    std::exit(1);
  }
  const std::string msg = job.rendezvous + " " + job.token;
  if (write(child.fd, msg.c_str(), msg.size() + 1) < 0) std::exit(1);
  job.cuda_device = cuda_device;
  std::vector<api::Sender> senders;
  std::vector<std::vector<exec::Buffer>> shards(ctl->senders());
  const auto fail = [](const Status& st) {
    std::fprintf(stderr, "e2e_bench: %s\n", st.message().c_str());
    std::exit(1);
  };
  for (uint32_t s = 0; s < ctl->senders(); ++s) {
    auto snd = api::Sender::create(job, s);
    if (!snd) fail(snd.status());
    for (const api::TensorInfo& t : snd->tensors()) {
      auto b = exec::Buffer::allocate(
          cuda_device >= 0 ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost, t.bytes,
          std::max(cuda_device, 0));
      if (!b) fail(b.status());
      const std::vector<std::byte> fill(t.bytes, std::byte{0x3c});  // BF16 0x3c3c = 0.0115
      if (Status st = b->copy_from_host(fill.data(), fill.size()); !st) fail(st);
      shards[s].push_back(std::move(b).value());
      if (Status st = snd->register_tensor(t.name, shards[s].back().data(), t.bytes); !st) fail(st);
    }
    senders.push_back(std::move(snd).value());
  }
  for (auto& s : senders)
    if (Status st = s.prepare(); !st) {
      std::fprintf(stderr, "%s\n", st.message().c_str());
      std::exit(1);
    }
  std::vector<double> rates;
  E2E out;
  double cpu = 0, proj = 0;
  // One thread per sender for the whole run, as a trainer rank calls push from its own loop;
  // each step starts them together and ends when the last push returns.
  std::vector<api::PushStats> st(senders.size());
  std::barrier start(static_cast<std::ptrdiff_t>(senders.size() + 1)),
      done(static_cast<std::ptrdiff_t>(senders.size() + 1));
  std::vector<std::thread> ts;
  for (size_t s = 0; s < senders.size(); ++s)
    ts.emplace_back([&, s] {
      for (int step = 1; step <= kSteps; ++step) {
        start.arrive_and_wait();
        auto r = senders[s].push(static_cast<uint64_t>(step));
        if (!r) {
          std::fprintf(stderr, "e2e_bench: %s\n", r.status().message().c_str());
          std::exit(1);
        }
        st[s] = *r;
        done.arrive_and_wait();
      }
    });
  for (int step = 1; step <= kSteps; ++step) {
    const double c0 = cpu_s();
    const double t0 = perf::now_s();
    start.arrive_and_wait();
    done.arrive_and_wait();
    const double dt = perf::now_s() - t0;
    uint64_t bytes = 0, writes = 0;
    double p = 0, post = 0;
    for (const auto& x : st) {
      bytes += x.bytes;
      writes += x.writes;
      p += x.projection_seconds;
      post += x.post_seconds;
    }
    (void)c0;
    if (step > 2) {  // the first steps warm caches and connections
      rates.push_back(static_cast<double>(bytes) / dt / 1e9);
      const auto& slow = *std::max_element(
          st.begin(), st.end(), [](const auto& a, const auto& b) { return a.seconds < b.seconds; });
      const double k = 1e3 / (kSteps - 2);
      out.ready += slow.ready_seconds * k;
      out.mirror += slow.mirror_seconds * k;
      out.gather += slow.gather_seconds * k;
      out.project += slow.projection_seconds * k;
      out.ring += slow.ring_wait_seconds * k;
      out.post += slow.post_seconds * k;
      out.drain += slow.drain_seconds * k;
      out.push += slow.seconds * k;
      cpu += post;
      proj += p;
      out.writes += writes;
    }
    out.bytes = bytes;
  }
  for (auto& t : ts) t.join();
  int status = 0;
  waitpid(child.pid, &status, 0);
  std::sort(rates.begin(), rates.end());
  out.gbps = rates[rates.size() / 2];
  out.cpu_us_per_write = cpu / static_cast<double>(out.writes) * 1e6;
  out.proj_ms = proj / static_cast<double>(kSteps - 2) * 1e3;
  return out;
}

double rate_gbps(const sim::WritePattern& pattern) {
  auto r = sim::write_rate(pattern);
  if (!r) {
    std::fprintf(stderr, "e2e_bench: raw writes: %s\n", r.status().message().c_str());
    std::exit(1);
  }
  return *r / 1e9;
}

// What tracing costs a sender per step: `spans` spans (and counters) plus one flush, measured
// on a trace file in this run (best of 5 repetitions of 200 steps), in seconds.
double trace_cost_s(size_t spans) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("wc-e2e-trace-cost-" + std::to_string(getpid()) + ".json");
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    auto t = exec::StepTrace::open(path.string(), "trainer 0", 1 << 20);
    if (!t) return 0;
    const double t0 = perf::now_s();
    for (int step = 0; step < 200; ++step) {
      for (size_t i = 0; i < spans; ++i) {
        const auto now = Clock::now();
        (*t)->span("projection", exec::StepTrace::kCompute, now, now, 1);
      }
      (void)(*t)->flush();
    }
    best = std::min(best, (perf::now_s() - t0) / 200);
  }
  std::filesystem::remove(path);
  return best;
}

// The most spans one sender of `plan` records in a step: its gathers' phases and projections,
// a ring wait per projection at most, readiness (2), drain, push and a counter per NIC.
size_t spans_per_step(const plan::Plan& plan) {
  size_t most = 0;
  for (const plan::Sender& s : plan.senders) {
    size_t n = 4 + static_cast<size_t>(s.nics);
    for (const plan::Task& t : s.tasks) n += t.op == plan::Task::Op::kProject ? 2 : 0;
    n += plan.phases;
    most = std::max(most, n);
  }
  return most;
}

}  // namespace

int main(int argc, char** argv) {
  int cuda_device = -1, scale = 1;
  std::string profile_out;
  uint64_t raw_bytes = 16 << 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) {
      const std::string d = argv[++i];
      if (d != "host" && d != "cuda") {
        std::fprintf(stderr, "e2e_bench: --device is host or cuda, not '%s'\n", d.c_str());
        return 2;
      }
      cuda_device = d == "cuda" ? 0 : -1;
    } else if (a == "--inference-device" && i + 1 < argc) {
      const std::string d = argv[++i];
      if (d != "host" && d != "cuda") {
        std::fprintf(stderr, "e2e_bench: --inference-device is host or cuda, not '%s'\n",
                     d.c_str());
        return 2;
      }
      g_receivers_on_gpu = d == "cuda";
    } else if (a == "--raw-kib" && i + 1 < argc) {
      raw_bytes = std::strtoull(argv[++i], nullptr, 10) << 10;
      if (raw_bytes == 0 || raw_bytes > (64ull << 20)) {
        std::fprintf(stderr, "e2e_bench: --raw-kib takes 1..65536\n");
        return 2;
      }
    } else if (a == "--gather-cost-us" && i + 1 < argc) {
      g_plan_options.gather_cost_us = std::strtod(argv[++i], nullptr);
      if (!(g_plan_options.gather_cost_us >= 0)) {
        std::fprintf(stderr, "e2e_bench: --gather-cost-us takes a number >= 0\n");
        return 2;
      }
    } else if (a == "--profile-out" && i + 1 < argc) {
      profile_out = argv[++i];
    } else if (a == "--scale" && i + 1 < argc) {
      scale = std::atoi(argv[++i]);
      if (scale < 1 || scale > 64) {
        std::fprintf(stderr, "e2e_bench: --scale takes 1..64\n");
        return 2;
      }
    } else {
      std::fprintf(stderr,
                   "usage: e2e_bench [--device host|cuda] [--inference-device host|cuda] [--scale "
                   "K] [--raw-kib N] "
                   "[--gather-cost-us X] [--profile-out FILE]\n"
                   "  --device cuda  trainer shards in GPU memory, projections on GPU 0\n"
                   "  --inference-device cuda  receiver tensors in GPU memory (staged through\n"
                   "                 pinned host memory over tcp, copied in per sender)\n"
                   "  --scale K      demo-moe with every dimension times K (default 1)\n"
                   "  --raw-kib N    size of the raw baseline's writes (default 16384)\n"
                   "  --gather-cost-us X  the planner's fixed cost per gathered piece (packing "
                   "small units\n"
                   "                 into gathers; default: the planner's)\n"
                   "  --profile-out FILE  write the machine profile measured in this run\n"
                   "                 (weightcast.profile/v1; `weightcast plan --profile FILE`)\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  // (Asking the driver initializes CUDA, which a forked child then cannot use: with the
  // receivers on the GPU, their child process finds out for itself.)
  if (cuda_device >= 0 && !g_receivers_on_gpu &&
      (!exec::cuda_built() || exec::cuda_devices() == 0)) {
    std::fprintf(stderr, "e2e_bench: --device cuda needs a CUDA build and a GPU\n");
    return 2;
  }
  const auto dir =
      std::filesystem::temp_directory_path() / ("wc-e2e-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir / "copy");
  std::filesystem::create_directories(dir / "moe");
  write_copy_specs((dir / "copy").string());
  write_scaled_moe((dir / "moe").string(), scale);
  for (const char* job : {"copy", "moe"})
    if (Status st =
            plan::save_json(plan_of((dir / job).string()), (dir / job / "plan.json").string());
        !st) {
      std::fprintf(stderr, "e2e_bench: %s\n", st.message().c_str());
      return 1;
    }
  // The baseline is the better of two raw runs: one pair (transport_bw's method), and the jobs'
  // shape (4 trainer ranks as threads here, 2 inference ranks in a child), which many cores favour.
  const double raw1 = rate_gbps(sim::all_pairs(1, 1, raw_bytes, false)),
               raw42 = rate_gbps(sim::all_pairs(4, 2, raw_bytes, false)),
               raw = std::max(raw1, raw42);
  const sim::WritePattern fresh = sim::all_pairs(4, 2, raw_bytes, true);
  double fresh_gib = 0;
  for (uint64_t b : fresh.src_bytes) fresh_gib += static_cast<double>(b) / (1 << 30);
  for (uint64_t b : fresh.dst_bytes) fresh_gib += static_cast<double>(b) / (1 << 30);
  const double raw42_fresh = rate_gbps(fresh);
  // Each job's own writes with nothing of the executor around them: what the transport does with
  // exactly this schedule's sizes and pairs, from and to a step's worth of memory.
  const plan::Plan copy_plan = plan_of((dir / "copy").string()),
                   moe_plan = plan_of((dir / "moe").string());
  const double copy_replay = rate_gbps(sim::plan_writes(copy_plan));
  const double moe_replay = rate_gbps(sim::plan_writes(moe_plan));
  // The machine profile of this run: the raw rates above, small writes for the per-write cost,
  // and the moe plan's projections timed on this CPU.
  sim::LoopbackRates lr;
  lr.large_bytes = raw_bytes;
  lr.pair_bytes_per_s = raw1 * 1e9;
  lr.host_bytes_per_s = raw42_fresh * 1e9;
  lr.pair_small_bytes_per_s = rate_gbps(sim::all_pairs(1, 1, lr.small_bytes, false)) * 1e9;
  lr.host_small_bytes_per_s =
      rate_gbps(sim::all_pairs(4, 2, lr.small_bytes, false, lr.per_pair / 4)) * 1e9;
  if (Status st = sim::measure_rendezvous(lr); !st) {
    std::fprintf(stderr, "e2e_bench: rendezvous: %s\n", st.message().c_str());
    return 1;
  }
  sim::Profile prof = sim::loopback_profile(lr);
  const spec::Inputs moe_in = inputs_of((dir / "moe").string());
  if (auto t = sim::measure_projection_cpu(moe_in, moe_plan, prof); !t) {
    std::fprintf(stderr, "e2e_bench: %s\n", t.status().message().c_str());
    return 1;
  }
  if (!profile_out.empty()) std::ofstream(profile_out) << sim::profile_json(prof);
  sim::Options so;
  for (const auto& h : moe_in.topology.hosts)
    so.topology_gather_us = std::max(so.topology_gather_us, h.gather_us);
  const auto simulate = [&](const plan::Plan& p) {
    auto r = sim::simulate(p, prof, so);
    if (!r) {
      std::fprintf(stderr, "e2e_bench: simulate: %s\n", r.status().message().c_str());
      std::exit(1);
    }
    return std::move(r).value();
  };
  const sim::Simulation copy_sim = simulate(copy_plan), moe_sim = simulate(moe_plan);
  const Child copy_rx = spawn_receivers((dir / "copy").string(), 2);
  const Child moe_rx = spawn_receivers((dir / "moe").string(), 2);
  const E2E copy = run_job((dir / "copy").string(), copy_rx, cuda_device);
  const E2E q = run_job((dir / "moe").string(), moe_rx, cuda_device);
  std::filesystem::remove_all(dir);
  const char* where = cuda_device >= 0 ? "GPU" : "CPU";
  std::printf(
      "e2e_bench: tcp;ofi_rxm on loopback, 1 NIC per process, trainer shards in %s memory, "
      "receiver tensors in %s; e2e = median step of %d (2 warm-up steps dropped)\n",
      cuda_device >= 0 ? "GPU" : "host", g_receivers_on_gpu ? "GPU memory (staged)" : "host memory",
      kSteps);
  std::printf(
      "  raw %5.0f KiB writes               %.2f GB/s (the baseline: the better of %.2f GB/s for "
      "1 pair and %.2f GB/s from 4 writers to 2 targets)\n",
      static_cast<double>(raw_bytes >> 10), raw, raw1, raw42);
  std::printf("  copy (BF16 FSDP4 -> TP2, %.0f MiB)  %.2f GB/s per step, %llu writes/step\n",
              static_cast<double>(copy.bytes) / (1 << 20), copy.gbps,
              static_cast<unsigned long long>(copy.writes / (kSteps - 2)));
  std::printf(
      "  moe  (demo-moe x%d, FP8 on the %s) %.2f GB/s per step (%.1f MB in %.2f ms), %llu "
      "writes/step, projection %.1f ms/step summed over senders\n",
      scale, where, q.gbps, static_cast<double>(q.bytes) / 1e6,
      static_cast<double>(q.bytes) / q.gbps / 1e6,
      static_cast<unsigned long long>(q.writes / (kSteps - 2)), q.proj_ms);
  for (const auto& [name, e] : {std::pair<const char*, const E2E&>{"copy", copy}, {"moe", q}})
    std::printf(
        "  %-4s slowest sender, ms/step: push %.2f = ready %.2f + mirror %.2f + gather %.2f + "
        "projection %.2f + ring wait %.2f + drain %.2f + rest (posting on the progress thread: "
        "%.2f)\n",
        name, e.push, e.ready, e.mirror, e.gather, e.project, e.ring, e.drain, e.post);
  std::printf(
      "  raw 4x2, every write from and to memory of its own (%.1f GiB, as a step's writes): %.2f "
      "GB/s\n",
      fresh_gib, raw42_fresh);
  std::printf(
      "  replay: the jobs' writes alone (same sizes and pairs, a step's memory, all posted at "
      "once): copy %.2f GB/s, moe %.2f GB/s\n",
      copy_replay, moe_replay);
  // The target (issue 4): >= 0.8x transport_bw's raw number, one pair of processes. Stricter:
  // the better raw run, which on many cores is the 4 x 2 one from one reused (cached) buffer.
  perf::ratio("e2e copy step vs raw 1 pair", copy.gbps, raw1, "GB/s",
              "target >= 0.8: transport_bw's method");
  const std::string moe_note = std::string("target >= 0.8: transport_bw's method; ") +
                               (cuda_device >= 0 ? "GPU projection" : "CPU projection");
  perf::ratio("e2e moe step vs raw 1 pair", q.gbps, raw1, "GB/s", moe_note.c_str());
  perf::ratio("e2e copy step vs best raw", copy.gbps, raw, "GB/s",
              "stricter: 1 pair or 4x2 from one reused buffer");
  perf::ratio("e2e moe step vs best raw", q.gbps, raw, "GB/s",
              "stricter: 1 pair or 4x2 from one reused buffer");
  perf::ratio("e2e copy vs raw 4x2, own memory", copy.gbps, raw42_fresh, "GB/s",
              "no write reuses a cached buffer");
  perf::ratio("e2e moe vs raw 4x2, own memory", q.gbps, raw42_fresh, "GB/s",
              "no write reuses a cached buffer");
  perf::ratio("e2e copy step vs its writes alone", copy.gbps, copy_replay, "GB/s",
              "what the executor costs");
  perf::ratio("e2e moe step vs its writes alone", q.gbps, moe_replay, "GB/s",
              "what the executor costs: gathers, projection, phases");
  std::printf(
      "%-34s %.1f us per write (time in the NICs' post calls per write; copy %.1f, moe %.1f)\n",
      "binding-free re-posting", std::max(copy.cpu_us_per_write, q.cpu_us_per_write),
      copy.cpu_us_per_write, q.cpu_us_per_write);
  // Tracing (JobConfig.trace_dir): what its spans and per-step flush cost against the steps
  // (target: under 2%), measured here rather than as two noisy runs' difference.
  for (const auto& [name, e, p] :
       {std::tuple<const char*, const E2E&, const plan::Plan&>{"copy", copy, copy_plan},
        {"moe", q, moe_plan}}) {
    const size_t n = spans_per_step(p);
    const double cost_ms = trace_cost_s(n) * 1e3,
                 step_ms = static_cast<double>(e.bytes) / e.gbps / 1e6;
    perf::ratio(std::string("tracing cost vs the ") + name + " step", cost_ms, step_ms, "ms",
                fmt::format("target < 0.02: {} spans + a flush per sender and step", n).c_str());
  }
  // The simulator on the profile measured above, beside the measured steps (issue 22's target:
  // within 15%). Only host memory is profiled here: with --device cuda the projections ran on a
  // GPU this run did not profile.
  std::printf(
      "  profile of this run: nic %.2f GB/s a pair + %.2f us a write, host path %.2f GB/s + "
      "%.2f us a write, CPU projection %.2f GB/s + %.1f us each, rendezvous %.1f us a round "
      "trip, %.1f us a request at the server\n",
      prof.nic_gbps / 8, prof.write_us, prof.host_bytes_per_s / 1e9, prof.host_write_us,
      prof.project_bytes_per_s / 1e9, prof.project_us, prof.ready_rtt_us, prof.ready_server_us);
  for (const auto& [name, e, sm] :
       {std::tuple<const char*, const E2E&, const sim::Simulation&>{"copy", copy, copy_sim},
        {"moe", q, moe_sim}}) {
    const double measured_ms = static_cast<double>(e.bytes) / e.gbps / 1e6;
    std::printf(
        "  %-4s simulated %.2f ms (floor %.2f ms): slowest sender %u: readiness %.2f (beside "
        "compute), gathers %.2f + projection %.2f + ring wait %.2f + writes after compute %.2f "
        "ms\n",
        name, sm.predicted_s * 1e3, sm.floor_s * 1e3, sm.sender, sm.stages.ready_s * 1e3,
        sm.stages.gather_s * 1e3, sm.stages.project_s * 1e3, sm.stages.ring_wait_s * 1e3,
        sm.stages.writes_s * 1e3);
    if (cuda_device < 0)
      perf::ratio(std::string("simulated vs measured ") + name, sm.predicted_s * 1e3, measured_ms,
                  "ms", "target 0.85..1.15: the profile measured in this run");
  }
  return 0;
}
