// The end-to-end demo: a rendezvous, N trainer and M inference processes on this host over
// libfabric; every step the trainers change their weights, push them through the plan's
// projections and one-sided writes, and every inference process checks every byte it received
// against the reference reshard before it reports. Workers are this same binary (`worker`).
#include "demo.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "weightcast/exec/executor.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/parts.h"
#include "weightcast/exec/safetensors.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"

namespace weightcast::cli {

namespace {

using Clock = std::chrono::steady_clock;
auto in_s(double s) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}
std::string str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

Result<spec::Inputs> load(const DemoOptions& o) {
  return spec::load_inputs(o.trainer, o.inference, o.topology);
}

plan::Options demo_plan_options(const DemoOptions& o) {
  plan::Options opts;
  opts.gather_cost_us = o.gather_cost_us;
  if (o.staging_mb > 0) opts.staging_watermark = static_cast<uint64_t>(o.staging_mb * (1 << 20));
  return opts;
}

std::vector<std::string> nic_names(const DemoOptions& o) {
  std::vector<std::string> v;
  std::istringstream ss(o.nic_list);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
  if (v.empty())
    for (int i = 0; i < o.nics; ++i) v.push_back("127.0.0." + std::to_string(i + 1));
  return v;
}

// `slot` numbers this process among all `peers` of the job (trainers first): the verbs backend
// keeps one RC QP per peer slot.
std::vector<transport::DomainConfig> nic_configs(const DemoOptions& o, uint32_t slot,
                                                 uint32_t peers) {
  std::vector<transport::DomainConfig> v;
  for (const std::string& nic : nic_names(o)) {
    transport::DomainConfig c;
    c.backend = o.backend;
    c.provider = o.backend == "verbs" ? nic : o.provider;
    c.address = o.backend == "verbs" ? "" : nic;
    c.rank = slot;
    c.max_peers = std::max(c.max_peers, peers);
    v.push_back(c);
  }
  return v;
}

// Trainer values per step: the loaded weights scaled by (1 + (step-1)/8) as a stand-in for
// training, or the verifier's pattern when no weights are given.
Result<plan::ValueFn> value_source(const spec::Inputs& in, const std::string& weights) {
  if (weights.empty()) return plan::ValueFn{};
  auto st = exec::read_safetensors(weights);
  if (!st) return st.status();
  auto table = std::make_shared<std::vector<exec::StTensor>>(in.trainer.params.size());
  std::string missing;
  for (size_t i = 0; i < in.trainer.params.size(); ++i) {
    const spec::Param& p = in.trainer.params[i];
    auto it = st->find(p.name);
    if (it == st->end()) {
      missing += (missing.empty() ? "" : ", ") + p.name;
      continue;
    }
    if (!(it->second.shape == p.shape))
      return invalid("{}: '{}' has shape {}, the trainer spec says {}", weights, p.name,
                     it->second.shape.str(), p.shape.str());
    (*table)[i] = std::move(it->second);
  }
  if (!missing.empty()) return invalid("{}: no tensors for trainer params {}", weights, missing);
  return plan::ValueFn([table](int param, int64_t index, uint64_t step) {
    const exec::StTensor& t = (*table)[static_cast<size_t>(param)];
    const float v = core::load_as_float(
        t.dtype, t.data.data() + static_cast<size_t>(index) * core::dtype_size(t.dtype));
    return v * (1.0f + static_cast<float>(step - 1) / 8.0f);
  });
}

float value_at(const plan::ValueFn& values, int param, uint64_t seed, int64_t index,
               uint64_t step) {
  return values ? values(param, index, step) : plan::pattern_value(seed, index, step);
}

// What training did this step: new values in every element of every shard.
Status fill_shards(const spec::Inputs& in, exec::TrainerExecutor& ex, uint64_t step,
                   const plan::ValueFn& values) {
  for (const exec::ShardSlot& s : ex.layout().shards) {
    const spec::Param& p = in.trainer.params[s.param];
    const uint64_t seed = plan::pattern_seed(p.name);
    const size_t esz = core::dtype_size(p.dtype);
    const bool device = ex.shard_memory() == exec::MemoryKind::kCuda;
    std::vector<std::byte> host(device ? s.bytes : 0);
    std::byte* out = device ? host.data() : ex.shard(s.param);
    size_t e = 0;
    core::for_each_run(p.shape, s.box, [&](int64_t off, int64_t len) {
      for (int64_t i = 0; i < len; ++i, ++e)
        core::store_from_float(p.dtype, value_at(values, s.param, seed, off + i, step),
                               out + e * esz);
    });
    if (device)
      if (Status st = exec::copy_host_to_device(ex.shard(s.param), host.data(), s.bytes); !st)
        return st;
  }
  return Status::ok();
}

uint64_t rss_kib() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) / 1024;
}

// Rounds: the controller publishes "round/N" = "STEP GENERATION" (a retried step gets a new
// round and generation) or "end"; every worker processes rounds in order.
struct Round {
  bool end = false;
  uint64_t step = 0;
  uint8_t gen = 0;
  std::vector<uint32_t> incarnations;          // per receiver
  std::vector<uint32_t> trainer_incarnations;  // per trainer
};
Result<Round> next_round(transport::RendezvousClient& rdv, int n) {
  auto v = rdv.get(fmt::format("round/{}", n), in_s(3600));
  if (!v) return v.status();
  Round r;
  const std::string t = str(*v);
  if (t == "end") {
    r.end = true;
    return r;
  }
  unsigned g = 0;
  std::istringstream is(t);
  std::string incs, tincs;
  is >> r.step >> g >> incs >> tincs;
  r.gen = static_cast<uint8_t>(g);
  std::istringstream ls(incs);
  for (std::string x; std::getline(ls, x, ',');)
    r.incarnations.push_back(static_cast<uint32_t>(std::stoul(x)));
  std::istringstream ts(tincs);
  for (std::string x; std::getline(ts, x, ',');)
    r.trainer_incarnations.push_back(static_cast<uint32_t>(std::stoul(x)));
  return r;
}

int trainer_worker(const WorkerOptions& w, const spec::Inputs& in, const plan::Plan& p,
                   transport::RendezvousClient& rdv, const plan::ValueFn& values) {
  const auto peers = static_cast<uint32_t>(p.senders.size() + p.receivers.size());
  auto ex = exec::TrainerExecutor::create(
      in, p, static_cast<uint32_t>(w.index),
      nic_configs(w.demo, static_cast<uint32_t>(w.index), peers), &rdv, true,
      w.demo.device == "cuda" ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost);
  if (!ex) {
    (void)rdv.put(fmt::format("fail/trainer/{}", w.index), ex.status().message());
    return 1;
  }
  (*ex)->set_incarnation(static_cast<uint32_t>(w.incarnation));
  // A restarted trainer links to its peers as they are now (a receiver or another trainer may
  // have restarted before it): the incarnations of the round it joins at.
  std::vector<uint32_t> recv_inc, trainer_inc;
  if (w.incarnation > 0) {
    auto r0 = next_round(rdv, w.first_round);
    if (!r0) return 1;
    recv_inc = r0->incarnations;
    trainer_inc = r0->trainer_incarnations;
  }
  if (Status s = (*ex)->prepare(in_s(w.demo.deadline_s), recv_inc, trainer_inc); !s) {
    (void)rdv.put(fmt::format("fail/trainer/{}", w.index), s.message());
    return 1;
  }
  std::set<uint32_t> recvs;
  for (const plan::Write& x : p.writes)
    if (x.sender == static_cast<uint32_t>(w.index)) recvs.insert(p.dests[x.dest].receiver);
  for (int n = w.first_round;; ++n) {
    auto r = next_round(rdv, n);
    if (!r) return 1;
    if (r->end) return 0;
    for (uint32_t rc : recvs)  // a restarted receiver: reconnect and use its new buffers
      if (rc < r->incarnations.size())
        if (Status s = (*ex)->rejoin(rc, r->incarnations[rc], in_s(w.demo.deadline_s)); !s) {
          (void)rdv.put(fmt::format("pushed/{}/{}", n, w.index), "FAIL " + s.message());
          return 1;
        }
    for (size_t t = 0; t < r->trainer_incarnations.size(); ++t)  // a restarted gather root
      if (Status s = (*ex)->rejoin_trainer(static_cast<uint32_t>(t), r->trainer_incarnations[t],
                                           in_s(w.demo.deadline_s));
          !s) {
        (void)rdv.put(fmt::format("pushed/{}/{}", n, w.index), "FAIL " + s.message());
        return 1;
      }
    if (Status s = fill_shards(in, **ex, r->step, values); !s) {
      (void)rdv.put(fmt::format("pushed/{}/{}", n, w.index), "FAIL " + s.message());
      return 1;
    }
    // Gathers and projections start at once; the first write waits for the receivers.
    // Every receiver armed the round's generation (the controller gives each round a new one).
    auto ready = [&]() -> Result<std::map<uint32_t, exec::Armed>> {
      std::map<uint32_t, exec::Armed> armed;
      for (uint32_t rc : recvs) {
        if (auto k = rdv.get(fmt::format("ready/{}/{}", n, rc), in_s(w.demo.deadline_s)); !k)
          return Status(k.status().code(), fmt::format("receiver {} never became ready: {}", rc,
                                                       k.status().message()));
        armed[rc] = {r->gen, (*ex)->receiver_incarnation(rc)};
      }
      return armed;
    };
    if (n == w.die_in_round) {  // fault injection: half the writes, then die
      uint64_t mine = 0;
      for (const plan::Write& x : p.writes) mine += x.sender == static_cast<uint32_t>(w.index);
      (void)(*ex)->push(r->gen, in_s(w.demo.deadline_s), mine / 2, ready);
      std::fflush(stdout);
      kill(getpid(), SIGKILL);
    }
    auto rep = (*ex)->push(r->gen, in_s(w.demo.deadline_s), UINT64_MAX, ready);
    if (!rep) {
      (void)rdv.put(fmt::format("pushed/{}/{}", n, w.index), "FAIL " + rep.status().message());
      continue;
    }
    (void)rdv.put(
        fmt::format("pushed/{}/{}", n, w.index),
        fmt::format("{} {} {:.6f} {:.6f} {:.6f} {} {:.4f}", rep->bytes, rep->writes, rep->project_s,
                    rep->write_s, rep->total_s, rss_kib(), fmt::join(rep->nic_gbps, ",")));
  }
}

int inference_worker(const WorkerOptions& w, const spec::Inputs& in, const plan::Plan& p,
                     transport::RendezvousClient& rdv, const plan::ValueFn& values) {
  const auto me = static_cast<uint32_t>(w.index);
  const auto S = static_cast<uint32_t>(p.senders.size());
  auto rc = exec::InferenceReceiver::create(
      in, p, me, nic_configs(w.demo, S + me, S + static_cast<uint32_t>(p.receivers.size())), &rdv);
  if (!rc) {
    (void)rdv.put(fmt::format("fail/inference/{}", w.index), rc.status().message());
    return 1;
  }
  (*rc)->set_incarnation(static_cast<uint32_t>(w.incarnation));
  if (Status s = (*rc)->publish(); !s) return 1;
  for (int n = w.first_round;; ++n) {
    auto r = next_round(rdv, n);
    if (!r) return 1;
    if (r->end) return 0;
    // Transports whose targets connect too (verbs): to every sender, again after a restart.
    if (Status s = (*rc)->connect_senders(r->trainer_incarnations, in_s(w.demo.deadline_s)); !s) {
      (void)rdv.put(fmt::format("verified/{}/{}", n, me), "FAIL " + s.message());
      continue;
    }
    (*rc)->begin(r->gen);
    (void)rdv.put(fmt::format("ready/{}/{}", n, me), "1");
    auto rep = (*rc)->wait(r->gen, in_s(w.demo.deadline_s));
    if (!rep) {
      (void)rdv.put(fmt::format("verified/{}/{}", n, me), "FAIL " + rep.status().message());
      continue;
    }
    // Every byte against the reference reshard of this step's weights.
    uint64_t checked = 0;
    std::string bad;
    for (uint32_t d = 0; d < p.dests.size() && bad.empty(); ++d) {
      if (p.dests[d].receiver != me) continue;
      const auto ref = plan::reference_tensor(in, p.dests[d], p.receivers[me], r->step, values);
      const std::byte* got = (*rc)->tensor(d);
      for (size_t i = 0; i < ref.size() && bad.empty(); ++i)
        if (ref[i] != got[i])
          bad = fmt::format("FAIL tensor '{}'{} byte {}: expected 0x{:02x}, got 0x{:02x}",
                            p.dest_names[p.dests[d].param], p.dests[d].scale ? " (scales)" : "", i,
                            static_cast<unsigned>(ref[i]), static_cast<unsigned>(got[i]));
      checked += ref.size();
    }
    if (bad.empty() && !w.demo.dump.empty() && r->step == static_cast<uint64_t>(w.demo.steps)) {
      // What this rank holds after the last step, as safetensors under the engine's names.
      std::vector<exec::StView> views;
      for (uint32_t d = 0; d < p.dests.size(); ++d) {
        const plan::DestTensor& dt = p.dests[d];
        if (dt.receiver != me) continue;
        const spec::DestParam& dp = in.inference.params[dt.param];
        views.push_back({dt.scale ? dp.quant->scale_name : dp.name, dt.dtype, dt.shape,
                         std::span<const std::byte>((*rc)->tensor(d), dt.bytes)});
      }
      const auto path = fmt::format("{}/replica{}-rank{}.safetensors", w.demo.dump,
                                    p.receivers[me].replica, p.receivers[me].rank);
      if (Status s = exec::write_safetensors(path, views,
                                             {{"step", std::to_string(r->step)}, {"format", "pt"}});
          !s)
        bad = "FAIL dump: " + s.message();
    }
    (void)rdv.put(
        fmt::format("verified/{}/{}", n, me),
        bad.empty() ? fmt::format("ok {} {:.6f} {}", checked, rep->wait_s, rss_kib()) : bad);
  }
}

}  // namespace

int run_worker(const WorkerOptions& w) {
  auto in = load(w.demo);
  if (!in) return 2;
  const auto colon = w.rdv.find(':');
  auto rdv = transport::RendezvousClient::connect(
      w.rdv.substr(0, colon), static_cast<uint16_t>(std::stoi(w.rdv.substr(colon + 1))), w.token,
      in_s(20));
  if (!rdv) return 1;
  // This worker's part of the controller's plan (it never plans itself).
  auto p = exec::fetch_part(w.role, static_cast<uint32_t>(w.index), plan::digest_inputs(*in), **rdv,
                            in_s(20));
  if (!p) {
    (void)(*rdv)->put(fmt::format("fail/{}/{}", w.role, w.index), p.status().message());
    return 2;
  }
  auto values = value_source(*in, w.demo.weights);
  if (!values) {
    (void)(*rdv)->put(fmt::format("fail/{}/{}", w.role, w.index), values.status().message());
    return 2;
  }
  return w.role == "trainer" ? trainer_worker(w, *in, *p, **rdv, *values)
                             : inference_worker(w, *in, *p, **rdv, *values);
}

int run_demo(const DemoOptions& o) {
  if (o.backend == "verbs" && o.nic_list.empty()) {
    std::fprintf(stderr,
                 "weightcast: error: --backend verbs needs --nic-list with the RDMA devices to use "
                 "(see `ibv_devices`), e.g. --nic-list mlx5_0 or rxe0,rxe1\n");
    return 2;
  }
  if (o.device == "cuda" && (!exec::cuda_built() || exec::cuda_devices() == 0)) {
    std::fprintf(stderr, "weightcast: error: --device cuda needs %s\n",
                 exec::cuda_built() ? "a GPU, and the driver reports none"
                                    : "a CUDA build (no nvcc was found at configure time)");
    return 2;
  }
  auto in = load(o);
  if (!in) {
    std::fprintf(stderr, "weightcast: error: %s\n", in.status().message().c_str());
    return 2;
  }
  auto p = plan::make_plan(*in, demo_plan_options(o));
  if (!p) {
    std::fprintf(stderr, "weightcast: error: %s\n", p.status().message().c_str());
    return 2;
  }
  if (auto v = value_source(*in, o.weights); !v) {
    std::fprintf(stderr, "weightcast: error: %s\n", v.status().message().c_str());
    return 2;
  }
  if (!o.dump.empty()) std::filesystem::create_directories(o.dump);
  const auto S = p->senders.size(), R = p->receivers.size();
  const std::string token =
      fmt::format("demo-{}-{}", getpid(), Clock::now().time_since_epoch().count());
  auto server = transport::RendezvousServer::start("127.0.0.1", 0, token);
  if (!server) {
    std::fprintf(stderr, "weightcast: error: %s\n", server.status().message().c_str());
    return 1;
  }
  const std::string where = fmt::format("127.0.0.1:{}", (*server)->port());
  auto rdv = transport::RendezvousClient::connect("127.0.0.1", (*server)->port(), token, in_s(10));
  if (!rdv) return 1;
  if (Status s = exec::publish_parts(*p, **rdv); !s) {
    std::fprintf(stderr, "weightcast: error: publishing the plan's parts: %s\n",
                 s.message().c_str());
    return 1;
  }
  uint64_t moved = 0;
  for (const plan::Write& w : p->writes) moved += w.len;
  std::printf(
      "demo: %zu trainer -> %zu inference processes over %s, %zu NIC(s) each (%s); plan %s: "
      "%zu writes and %zu gathers (host collective), %s per step\n",
      S, R, o.backend == "verbs" ? "ibverbs RC" : ("libfabric " + o.provider).c_str(),
      nic_names(o).size(), fmt::format("{}", fmt::join(nic_names(o), ",")).c_str(),
      p->inputs_digest.c_str(), p->writes.size(), p->gathers.size(),
      plan::human_bytes(static_cast<double>(moved)).c_str());
  std::fflush(stdout);
  const auto logdir =
      std::filesystem::temp_directory_path() / fmt::format("weightcast-demo-{}", getpid());
  std::filesystem::create_directories(logdir);
  std::vector<pid_t> trainers(S, -1), receivers(R, -1);
  auto spawn = [&](const std::string& role, size_t i, int first_round, int die_in_round,
                   int incarnation = 0) {
    const std::string log = (logdir / fmt::format("{}-{}.log", role, i)).string();
    std::vector<std::string> args{o.self,           "worker",
                                  "--role",         role,
                                  "--index",        std::to_string(i),
                                  "--rdv",          where,
                                  "--token",        token,
                                  "--trainer",      o.trainer,
                                  "--inference",    o.inference,
                                  "--topology",     o.topology,
                                  "--nics",         std::to_string(o.nics),
                                  "--provider",     o.provider,
                                  "--backend",      o.backend,
                                  "--nic-list",     o.nic_list,
                                  "--device",       o.device,
                                  "--deadline",     std::to_string(o.deadline_s),
                                  "--first-round",  std::to_string(first_round),
                                  "--die-in-round", std::to_string(die_in_round),
                                  "--steps",        std::to_string(o.steps),
                                  "--weights",      o.weights,
                                  "--dump",         o.dump,
                                  "--incarnation",  std::to_string(incarnation)};
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return pid;
  };
  for (size_t r = 0; r < R; ++r) receivers[r] = spawn("inference", r, 1, 0);
  // The fault: trainer 0 dies in the first attempt of step K (round K: no retries before it).
  for (size_t s = 0; s < S; ++s)
    trainers[s] = spawn("trainer", s, 1, s == 0 ? o.kill_trainer_at_step : 0);
  int failed = 0, round = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> rss;  // worker -> (after warm-up, last)
  auto note_rss = [&](const std::string& who, uint64_t kib, int step) {
    auto& e = rss[who];
    if (step <= 10 || e.first == 0) e.first = kib;
    e.second = kib;
  };
  std::vector<uint32_t> incarnation(R, 0), trainer_incarnation(S, 0);
  for (int step = 1; step <= o.steps && !failed; ++step) {
    if (step == o.restart_receiver_at_step) {
      // Fault drill: inference 0 goes away between steps and comes back with fresh buffers.
      kill(receivers[0], SIGKILL);
      waitpid(receivers[0], nullptr, 0);
      ++incarnation[0];
      receivers[0] = spawn("inference", 0, round + 1, 0, static_cast<int>(incarnation[0]));
      std::printf(
          "inference 0 killed after step %d and restarted (incarnation %u); trainers reconnect to "
          "it\n",
          step - 1, incarnation[0]);
    }
    auto join_list = [](const std::vector<uint32_t>& v) {
      return fmt::format("{}", fmt::join(v, ","));
    };
    for (int attempt = 1;; ++attempt) {
      ++round;
      const auto gen = static_cast<uint8_t>(round);
      (void)(*rdv)->put(fmt::format("round/{}", round),
                        fmt::format("{} {} {} {}", step, gen, join_list(incarnation),
                                    join_list(trainer_incarnation)));
      double slowest = 0, proj = 0, nic_lo = 1e30, nic_hi = 0;
      uint64_t bytes = 0, writes = 0, checked = 0;
      std::vector<std::string> why;
      for (size_t r = 0; r < R; ++r) {
        auto v = (*rdv)->get(fmt::format("verified/{}/{}", round, r), in_s(o.deadline_s + 30));
        const std::string t = v ? str(*v) : "FAIL " + v.status().message();
        if (t.rfind("ok ", 0) != 0) {
          why.push_back(fmt::format("inference {}: {}", r, t.substr(5)));
          continue;
        }
        std::istringstream is(t.substr(3));
        uint64_t c = 0, kib = 0;
        double ws = 0;
        is >> c >> ws >> kib;
        checked += c;
        note_rss(fmt::format("inference {}", r), kib, step);
      }
      for (size_t s = 0; s < S; ++s) {
        auto v = (*rdv)->get(fmt::format("pushed/{}/{}", round, s),
                             in_s(why.empty() ? o.deadline_s + 30 : 2));
        std::string t = v ? str(*v) : "FAIL no report (" + v.status().message() + ")";
        if (!v)  // a trainer that could not even start says why under fail/
          if (auto f = (*rdv)->get(fmt::format("fail/trainer/{}", s), in_s(0.05)); f)
            t = "FAIL could not start: " + str(*f);
        if (t.rfind("FAIL", 0) == 0) {
          why.push_back(fmt::format("trainer {}: {}", s, t.substr(5)));
          continue;
        }
        std::istringstream is(t);
        uint64_t b = 0, w = 0, kib = 0;
        double ps = 0, ws = 0, ts = 0;
        std::string nics;
        is >> b >> w >> ps >> ws >> ts >> kib >> nics;
        std::istringstream ns(nics);
        for (std::string x; std::getline(ns, x, ',');) {
          nic_lo = std::min(nic_lo, std::stod(x));
          nic_hi = std::max(nic_hi, std::stod(x));
        }
        bytes += b;
        writes += w;
        proj = std::max(proj, ps);
        slowest = std::max(slowest, ts);
        note_rss(fmt::format("trainer {}", s), kib, step);
      }
      if (why.empty()) {
        if (step <= 5 || step % 20 == 0 || step == o.steps || attempt > 1)
          std::printf(
              "step %d/%d: %s in %llu writes, slowest trainer %.1f ms (projection %.1f ms), %.2f "
              "GB/s (per NIC %.2f..%.2f); "
              "%llu bytes on %zu receivers verified against the reference%s\n",
              step, o.steps, plan::human_bytes(static_cast<double>(bytes)).c_str(),
              static_cast<unsigned long long>(writes), slowest * 1e3, proj * 1e3,
              slowest > 0 ? static_cast<double>(bytes) / slowest / 1e9 : 0.0, nic_lo, nic_hi,
              static_cast<unsigned long long>(checked), R,
              attempt > 1 ? fmt::format(" (attempt {})", attempt).c_str() : "");
        std::fflush(stdout);
        break;
      }
      std::printf("step %d/%d attempt %d FAILED:\n", step, o.steps, attempt);
      for (const auto& y : why) std::printf("  %s\n", y.c_str());
      std::fflush(stdout);
      // Repair: restart trainers that died; they rejoin at the next round, which retries the
      // step under a new generation (writes of the failed attempt can never count toward it).
      bool restarted = false;
      for (size_t s = 0; s < S; ++s) {
        int st = 0;
        if (waitpid(trainers[s], &st, WNOHANG) == trainers[s]) {
          std::printf("  trainer %zu died (%s); restarting it to rejoin at round %d\n", s,
                      WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exit", round + 1);
          trainers[s] =
              spawn("trainer", s, round + 1, 0, static_cast<int>(++trainer_incarnation[s]));
          restarted = true;
        }
      }
      if (attempt >= 3 || !restarted) {
        failed = 1;
        break;
      }
    }
  }
  (void)(*rdv)->put(fmt::format("round/{}", round + 1), "end");
  std::vector<pid_t> all = trainers;
  all.insert(all.end(), receivers.begin(), receivers.end());
  for (pid_t pid : all) {
    int st = 0;
    const auto end = in_s(failed ? 2 : 30);
    while (waitpid(pid, &st, WNOHANG) == 0) {
      if (Clock::now() > end) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failed && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
      std::printf("worker %d exited with status %d\n", pid, st);
      failed = 1;
    }
  }
  if (o.steps >= 50) {
    // Memory must not grow with steps: compare each worker's RSS after warm-up with its last.
    int64_t worst = 0;
    std::string who;
    for (const auto& [w, v] : rss)
      if (static_cast<int64_t>(v.second) - static_cast<int64_t>(v.first) > worst) {
        worst = static_cast<int64_t>(v.second) - static_cast<int64_t>(v.first);
        who = w;
      }
    std::printf("RSS: largest growth after step 10 is %lld KiB (%s) over %d steps\n",
                static_cast<long long>(worst), who.empty() ? "none" : who.c_str(), o.steps);
    if (worst > 4096) {
      std::printf("demo FAILED: memory grows with steps\n");
      failed = 1;
    }
  }
  if (failed) {
    std::printf("demo FAILED; worker logs in %s\n", logdir.c_str());
    return 1;
  }
  std::filesystem::remove_all(logdir);
  std::printf("demo OK: %d steps, every inference byte verified each step\n", o.steps);
  if (!o.dump.empty())
    std::printf("what each inference rank received is in %s/replica*-rank*.safetensors\n",
                o.dump.c_str());
  return 0;
}

}  // namespace weightcast::cli
