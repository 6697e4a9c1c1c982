// The demo's worker processes (this same binary, `weightcast worker`): a trainer runs a Sender
// over shards it allocates and changes every element each step; an inference process runs a
// Receiver and checks every byte it received against the reference reshard before it reports
// (the driver: demo.cpp).
#include <fcntl.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "demo_common.h"
#include "weightcast/exec/binding.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/parts.h"
#include "weightcast/exec/safetensors.h"
#include "weightcast/spec/layout.h"

namespace weightcast::cli {

using namespace demo;  // NOLINT: the demo's own parts

namespace {

float value_at(const plan::ValueFn& values, int param, uint64_t seed, int64_t index,
               uint64_t step) {
  return values ? values(param, index, step) : plan::pattern_value(seed, index, step);
}

struct Round {
  bool end = false;
  int n = 0;
  uint64_t step = 0;
};
// The next round for a worker that starts at round `first` (a restarted worker must not run the
// round that was current when it started: that one failed without it).
Result<Round> next_round(transport::RendezvousClient& rdv, uint64_t& seen, int first) {
  for (;;) {
    auto v = rdv.get_newer(kRound, seen, in_s(3600));
    if (!v) return v.status();
    seen = v->version;
    Round r;
    const std::string t(v->value.begin(), v->value.end());
    if (t == "end") {
      r.end = true;
      return r;
    }
    std::istringstream is(t);
    is >> r.n >> r.step;
    if (r.n >= first) return r;
  }
}

// A trainer process: a Sender over shards it allocates (host, or on the GPU), new values in
// every element every step.
int trainer_worker(const WorkerOptions& w, const api::JobConfig& base, const spec::Inputs& in,
                   transport::RendezvousClient& rdv, const plan::ValueFn& values) {
  const auto rank = static_cast<uint32_t>(w.index);
  api::JobConfig cfg = base;
  const std::string me = report_key("trainer", rank);
  auto fail = [&](const std::string& why) {
    (void)rdv.put(joined_key("trainer", rank), "FAIL " + why);
    return 1;
  };
  if (cfg.cuda_device >= 0) cfg.cuda_device = static_cast<int>(rank) % std::max(1, w.demo.gpus);
  auto snd = api::Sender::create(cfg, rank);
  if (!snd) return fail(snd.status().message());
  const exec::SenderLayout layout = exec::sender_layout(in, rank);
  const bool device = cfg.cuda_device >= 0;
  std::vector<exec::Buffer> shards;
  for (const exec::ShardSlot& sl : layout.shards) {
    auto b = exec::Buffer::allocate(device ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost,
                                    std::max<uint64_t>(sl.bytes, 1), std::max(cfg.cuda_device, 0));
    if (!b) return fail(b.status().message());
    shards.push_back(std::move(b).value());
    if (Status s =
            snd->register_tensor(in.trainer.params[sl.param].name, shards.back().data(), sl.bytes);
        !s)
      return fail(s.message());
  }
  if (Status s = snd->prepare(); !s) return fail(s.message());
  (void)rdv.put(joined_key("trainer", rank), "ok");
  uint64_t seen = 0;
  for (;;) {
    auto r = next_round(rdv, seen, w.first_round);
    if (!r) return 1;
    if (r->end) return 0;
    // What training did this step: new values in every element of every shard.
    for (size_t k = 0; k < layout.shards.size(); ++k) {
      const exec::ShardSlot& sl = layout.shards[k];
      const spec::Param& p = in.trainer.params[sl.param];
      const uint64_t seed = plan::pattern_seed(p.name);
      const size_t esz = core::dtype_size(p.dtype);
      std::vector<std::byte> host(device ? sl.bytes : 0);
      std::byte* out = device ? host.data() : shards[k].data();
      size_t e = 0;
      core::for_each_run(p.shape, sl.box, [&](int64_t off, int64_t len) {
        for (int64_t i = 0; i < len; ++i, ++e)
          core::store_from_float(p.dtype, value_at(values, sl.param, seed, off + i, r->step),
                                 out + e * esz);
      });
      if (device)
        if (Status st = exec::copy_host_to_device(shards[k].data(), host.data(), sl.bytes); !st) {
          (void)rdv.put(me, fmt::format("{} FAIL {}", r->n, st.message()));
          return 1;
        }
    }
    auto rep = snd->push(r->step);
    if (!rep) {
      std::fprintf(stderr, "round %d step %llu: push failed: %s\n", r->n,
                   static_cast<unsigned long long>(r->step), rep.status().message().c_str());
      (void)rdv.put(me, fmt::format("{} FAIL {}", r->n, rep.status().message()));
      continue;
    }
    (void)rdv.put(me, fmt::format("{} ok {} {} {:.6f} {:.6f} {:.6f} {} {:.4f}", r->n, rep->bytes,
                                  rep->writes, rep->projection_seconds, rep->drain_seconds,
                                  rep->seconds, rss_kib(), fmt::join(rep->nic_gbps, ",")));
  }
}

// An inference process: a Receiver over tensors it allocates, every byte checked each step.
int inference_worker(const WorkerOptions& w, const api::JobConfig& cfg, const spec::Inputs& in,
                     const plan::Plan& p, transport::RendezvousClient& rdv,
                     const plan::ValueFn& values) {
  const auto idx = static_cast<uint32_t>(w.index);
  const std::string me = report_key("inference", idx);
  api::JobConfig rcfg = cfg;  // the inference side's tensors live where --inference-device says
  rcfg.cuda_device = w.demo.inference_device == "cuda" ? std::max(1, w.demo.gpus) - 1 : -1;
  auto rc = api::Receiver::create(rcfg, idx);
  if (!rc) {
    (void)rdv.put(joined_key("inference", idx), "FAIL " + rc.status().message());
    return 1;
  }
  std::vector<std::vector<std::byte>> bufs;  // in plan order of this receiver's dests
  std::vector<exec::Buffer> gpu;             // the tensors themselves, with --inference-device cuda
  for (const api::TensorInfo& t : rc->tensors()) {
    bufs.emplace_back(t.bytes);
    void* target = bufs.back().data();
    if (rcfg.cuda_device >= 0) {
      auto b = exec::Buffer::allocate(exec::MemoryKind::kCuda, std::max<uint64_t>(t.bytes, 1),
                                      rcfg.cuda_device);
      if (!b) {
        (void)rdv.put(joined_key("inference", idx), "FAIL " + b.status().message());
        return 1;
      }
      gpu.push_back(std::move(b).value());
      target = gpu.back().data();
    }
    if (Status s = rc->register_tensor(t.name, target, t.bytes, t.scales); !s) {
      (void)rdv.put(joined_key("inference", idx), "FAIL " + s.message());
      return 1;
    }
  }
  if (Status s = rc->publish(); !s) {
    (void)rdv.put(joined_key("inference", idx), "FAIL " + s.message());
    return 1;
  }
  (void)rdv.put(joined_key("inference", idx), "ok");
  uint64_t seen = 0;
  for (;;) {
    auto r = next_round(rdv, seen, w.first_round);
    if (!r) return 1;
    if (r->end) return 0;
    auto rep = rc->wait(r->step);
    if (!rep) {
      std::fprintf(stderr, "round %d step %llu: wait failed: %s\n", r->n,
                   static_cast<unsigned long long>(r->step), rep.status().message().c_str());
      (void)rdv.put(me, fmt::format("{} FAIL {}", r->n, rep.status().message()));
      continue;
    }
    // GPU tensors are read back from the GPU: what the engine would use.
    Status read_back = Status::ok();
    for (size_t g = 0; g < gpu.size() && read_back; ++g)
      read_back = gpu[g].copy_to_host(bufs[g].data(), bufs[g].size());
    if (!read_back) {
      (void)rdv.put(me,
                    fmt::format("{} FAIL reading the GPU tensors: {}", r->n, read_back.message()));
      continue;
    }
    // Every byte against the reference reshard of this step's weights.
    uint64_t checked = 0;
    std::string bad;
    size_t k = 0;
    std::vector<exec::StView> views;
    for (uint32_t d = 0; d < p.dests.size() && bad.empty(); ++d) {
      const plan::DestTensor& dt = p.dests[d];
      if (dt.receiver != idx) continue;
      const std::vector<std::byte>& got = bufs[k++];
      const auto ref = plan::reference_tensor(in, dt, p.receivers[idx], r->step, values);
      for (size_t i = 0; i < ref.size() && bad.empty(); ++i)
        if (i >= got.size() || ref[i] != got[i])
          bad = fmt::format("FAIL tensor '{}'{} byte {}: expected 0x{:02x}, got 0x{:02x}",
                            p.dest_names[dt.param], dt.scale ? " (scales)" : "", i,
                            static_cast<unsigned>(ref[i]),
                            i < got.size() ? static_cast<unsigned>(got[i]) : 0u);
      checked += ref.size();
      const spec::DestParam& dp = in.inference.params[dt.param];
      views.push_back({dt.scale ? dp.quant->scale_name : dp.name, dt.dtype, dt.shape,
                       std::span<const std::byte>(got.data(), dt.bytes)});
    }
    if (bad.empty() && !w.demo.dump.empty() && r->step == static_cast<uint64_t>(w.demo.steps)) {
      // What this rank holds after the last step, as safetensors under the engine's names.
      const auto path = fmt::format("{}/replica{}-rank{}.safetensors", w.demo.dump,
                                    p.receivers[idx].replica, p.receivers[idx].rank);
      if (Status s = exec::write_safetensors(path, views,
                                             {{"step", std::to_string(r->step)}, {"format", "pt"}});
          !s)
        bad = "FAIL dump: " + s.message();
    }
    (void)rdv.put(me, bad.empty() ? fmt::format("{} ok {} {:.6f} {} {} {} {} {:.6f}", r->n, checked,
                                                rep->seconds, rss_kib(), rep->stale, rep->mode,
                                                rep->staged_bytes, rep->staging_s)
                                  : fmt::format("{} {}", r->n, bad));
  }
}

}  // namespace

int run_worker(const WorkerOptions& w) {
  const char* token = std::getenv("WEIGHTCAST_TOKEN");
  if (!token || !*token) {
    std::fprintf(stderr, "weightcast worker: WEIGHTCAST_TOKEN is not set\n");
    return 2;
  }
  auto in = load(w.demo);
  if (!in) return 2;
  api::JobConfig cfg = job_config(w.demo, w.rdv, token);
  if (w.demo.hosts > 1) cfg.ipc_host = fmt::format("demo-host-{}", w.index % w.demo.hosts);
  const auto colon = w.rdv.rfind(':');
  auto rdv = transport::RendezvousClient::connect(
      w.rdv.substr(0, colon), static_cast<uint16_t>(std::stoi(w.rdv.substr(colon + 1))), token,
      in_s(20));
  if (!rdv) return 1;
  auto values = value_source(*in, w.demo.weights);
  if (!values) {
    (void)(*rdv)->put(joined_key(w.role, static_cast<size_t>(w.index)),
                      "FAIL " + values.status().message());
    return 2;
  }
  if (w.role == "trainer") return trainer_worker(w, cfg, *in, **rdv, *values);
  // The reference check needs this rank's part of the plan (the Receiver fetched its own).
  auto p = exec::fetch_part(w.role, static_cast<uint32_t>(w.index), plan::digest_inputs(*in), **rdv,
                            in_s(20));
  if (!p) {
    (void)(*rdv)->put(joined_key(w.role, static_cast<size_t>(w.index)),
                      "FAIL " + p.status().message());
    return 2;
  }
  return inference_worker(w, cfg, *in, *p, **rdv, *values);
}

}  // namespace weightcast::cli
