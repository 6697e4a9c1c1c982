// The end-to-end demo: a rendezvous, N trainer and M inference processes on this host over
// libfabric; every step the trainers change their weights, push them through the plan's
// projections and one-sided writes, and every inference process checks every byte it received
// against the reference reshard before it reports. Workers are this same binary (`worker`).
#include "demo.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "weightcast/exec/executor.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"

namespace weightcast::cli {

namespace {

using Clock = std::chrono::steady_clock;
auto in_s(double s) { return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); }
std::string str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

Result<spec::Inputs> load(const DemoOptions& o) {
  return spec::load_inputs(o.trainer, o.inference, o.topology);
}

plan::Options demo_plan_options() {
  plan::Options opts;
  opts.write_cost_us = 0;  // no packing: the host executor runs no gathers
  return opts;
}

std::vector<transport::DomainConfig> nic_configs(const DemoOptions& o) {
  std::vector<transport::DomainConfig> v;
  for (int i = 0; i < o.nics; ++i) {
    transport::DomainConfig c;
    c.provider = o.provider;
    c.address = "127.0.0." + std::to_string(i + 1);
    v.push_back(c);
  }
  return v;
}

// What training did this step: every element gets the step's pattern value.
void fill_shards(const spec::Inputs& in, exec::TrainerExecutor& ex, uint64_t step) {
  for (const exec::ShardSlot& s : ex.layout().shards) {
    const spec::Param& p = in.trainer.params[s.param];
    const uint64_t seed = plan::pattern_seed(p.name);
    const size_t esz = core::dtype_size(p.dtype);
    std::byte* out = ex.shard(s.param);
    size_t e = 0;
    core::for_each_run(p.shape, s.box, [&](int64_t off, int64_t len) {
      for (int64_t i = 0; i < len; ++i, ++e) core::store_from_float(p.dtype, plan::pattern_value(seed, off + i, step), out + e * esz);
    });
  }
}

int trainer_worker(const WorkerOptions& w, const spec::Inputs& in, const plan::Plan& p, transport::RendezvousClient& rdv) {
  auto ex = exec::TrainerExecutor::create(in, p, static_cast<uint32_t>(w.index), nic_configs(w.demo), &rdv);
  if (!ex) {
    (void)rdv.put(fmt::format("fail/trainer/{}", w.index), ex.status().message());
    return 1;
  }
  if (Status s = (*ex)->prepare(in_s(w.demo.deadline_s)); !s) {
    (void)rdv.put(fmt::format("fail/trainer/{}", w.index), s.message());
    return 1;
  }
  std::set<uint32_t> recvs;
  for (const plan::Write& x : p.writes)
    if (x.sender == static_cast<uint32_t>(w.index)) recvs.insert(p.dests[x.dest].receiver);
  for (int step = 1; step <= w.demo.steps; ++step) {
    fill_shards(in, **ex, static_cast<uint64_t>(step));
    for (uint32_t r : recvs)
      if (auto k = rdv.get(fmt::format("ready/{}/{}", step, r), in_s(w.demo.deadline_s)); !k) return 1;
    auto rep = (*ex)->push(static_cast<uint64_t>(step), in_s(w.demo.deadline_s));
    if (!rep) {
      (void)rdv.put(fmt::format("pushed/{}/{}", step, w.index), "FAIL " + rep.status().message());
      return 1;
    }
    (void)rdv.put(fmt::format("pushed/{}/{}", step, w.index),
                  fmt::format("{} {} {:.6f} {:.6f} {:.6f}", rep->bytes, rep->writes, rep->project_s, rep->write_s, rep->total_s));
  }
  return 0;
}

int inference_worker(const WorkerOptions& w, const spec::Inputs& in, const plan::Plan& p, transport::RendezvousClient& rdv) {
  const auto me = static_cast<uint32_t>(w.index);
  auto rc = exec::InferenceReceiver::create(in, p, me, nic_configs(w.demo), &rdv);
  if (!rc) {
    (void)rdv.put(fmt::format("fail/inference/{}", w.index), rc.status().message());
    return 1;
  }
  if (Status s = (*rc)->publish(); !s) return 1;
  for (int step = 1; step <= w.demo.steps; ++step) {
    (*rc)->begin(static_cast<uint64_t>(step));
    (void)rdv.put(fmt::format("ready/{}/{}", step, me), "1");
    auto rep = (*rc)->wait(static_cast<uint64_t>(step), in_s(w.demo.deadline_s));
    if (!rep) {
      (void)rdv.put(fmt::format("verified/{}/{}", step, me), "FAIL " + rep.status().message());
      return 1;
    }
    // Every byte against the reference reshard of this step's weights.
    uint64_t checked = 0;
    for (uint32_t d = 0; d < p.dests.size(); ++d) {
      if (p.dests[d].receiver != me) continue;
      const auto ref = plan::reference_tensor(in, p.dests[d], p.receivers[me], static_cast<uint64_t>(step));
      const std::byte* got = (*rc)->tensor(d);
      for (size_t i = 0; i < ref.size(); ++i)
        if (ref[i] != got[i]) {
          (void)rdv.put(fmt::format("verified/{}/{}", step, me),
                        fmt::format("FAIL tensor '{}'{} byte {}: expected 0x{:02x}, got 0x{:02x}", p.dest_names[p.dests[d].param],
                                    p.dests[d].scale ? " (scales)" : "", i, static_cast<unsigned>(ref[i]), static_cast<unsigned>(got[i])));
          return 1;
        }
      checked += ref.size();
    }
    (void)rdv.put(fmt::format("verified/{}/{}", step, me), fmt::format("ok {} {:.6f}", checked, rep->wait_s));
  }
  return 0;
}

}  // namespace

int run_worker(const WorkerOptions& w) {
  auto in = load(w.demo);
  if (!in) return 2;
  auto p = plan::make_plan(*in, demo_plan_options());
  if (!p) return 2;
  const auto colon = w.rdv.find(':');
  auto rdv = transport::RendezvousClient::connect(w.rdv.substr(0, colon), static_cast<uint16_t>(std::stoi(w.rdv.substr(colon + 1))),
                                                  w.token, in_s(20));
  if (!rdv) return 1;
  // Everyone must run the same plan.
  auto digest = (*rdv)->get("plan/digest", in_s(20));
  if (!digest || str(*digest) != p->inputs_digest) {
    (void)(*rdv)->put(fmt::format("fail/{}/{}", w.role, w.index), "plan digest differs from the controller's");
    return 2;
  }
  return w.role == "trainer" ? trainer_worker(w, *in, *p, **rdv) : inference_worker(w, *in, *p, **rdv);
}

int run_demo(const DemoOptions& o) {
  auto in = load(o);
  if (!in) {
    std::fprintf(stderr, "weightcast: error: %s\n", in.status().message().c_str());
    return 2;
  }
  auto p = plan::make_plan(*in, demo_plan_options());
  if (!p) {
    std::fprintf(stderr, "weightcast: error: %s\n", p.status().message().c_str());
    return 2;
  }
  const auto S = p->senders.size(), R = p->receivers.size();
  const std::string token = fmt::format("demo-{}-{}", getpid(), Clock::now().time_since_epoch().count());
  auto server = transport::RendezvousServer::start("127.0.0.1", 0, token);
  if (!server) {
    std::fprintf(stderr, "weightcast: error: %s\n", server.status().message().c_str());
    return 1;
  }
  const std::string where = fmt::format("127.0.0.1:{}", (*server)->port());
  auto rdv = transport::RendezvousClient::connect("127.0.0.1", (*server)->port(), token, in_s(10));
  if (!rdv || !(*rdv)->put("plan/digest", p->inputs_digest)) return 1;
  uint64_t moved = 0;
  for (const plan::Write& w : p->writes) moved += w.len;
  std::printf("demo: %zu trainer -> %zu inference processes over libfabric %s, %d NIC(s) each; plan %s: "
              "%zu writes, %s per step\n",
              S, R, o.provider.c_str(), o.nics, p->inputs_digest.c_str(), p->writes.size(),
              plan::human_bytes(static_cast<double>(moved)).c_str());
  std::fflush(stdout);
  const auto logdir = std::filesystem::temp_directory_path() / fmt::format("weightcast-demo-{}", getpid());
  std::filesystem::create_directories(logdir);
  std::vector<std::pair<pid_t, std::string>> kids;
  auto spawn = [&](const std::string& role, size_t i) {
    const std::string log = (logdir / fmt::format("{}-{}.log", role, i)).string();
    std::vector<std::string> args{o.self, "worker", "--role", role, "--index", std::to_string(i), "--rdv", where,
                                  "--token", token, "--trainer", o.trainer, "--inference", o.inference,
                                  "--topology", o.topology, "--steps", std::to_string(o.steps), "--nics",
                                  std::to_string(o.nics), "--provider", o.provider,
                                  "--deadline", std::to_string(o.deadline_s)};
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    kids.push_back({pid, log});
  };
  for (size_t r = 0; r < R; ++r) spawn("inference", r);
  for (size_t s = 0; s < S; ++s) spawn("trainer", s);
  int failed = 0;
  for (int step = 1; step <= o.steps && !failed; ++step) {
    double slowest = 0, proj = 0;
    uint64_t bytes = 0, writes = 0, checked = 0;
    std::string why;
    for (size_t s = 0; s < S && why.empty(); ++s) {
      auto v = (*rdv)->get(fmt::format("pushed/{}/{}", step, s), in_s(o.deadline_s + 30));
      if (!v) {
        auto f = (*rdv)->get(fmt::format("fail/trainer/{}", s), in_s(0.1));
        why = fmt::format("trainer {}: {}", s, f ? str(*f) : v.status().message());
        break;
      }
      std::istringstream is(str(*v));
      std::string head;
      is >> head;
      if (head == "FAIL") {
        why = fmt::format("trainer {}: {}", s, str(*v).substr(5));
        break;
      }
      uint64_t w = 0;
      double ps = 0, ws = 0, ts = 0;
      is >> w >> ps >> ws >> ts;
      bytes += std::stoull(head);
      writes += w;
      proj = std::max(proj, ps);
      slowest = std::max(slowest, ts);
    }
    for (size_t r = 0; r < R && why.empty(); ++r) {
      auto v = (*rdv)->get(fmt::format("verified/{}/{}", step, r), in_s(o.deadline_s + 30));
      if (!v) {
        why = fmt::format("inference {}: {}", r, v.status().message());
        break;
      }
      const std::string t = str(*v);
      if (t.rfind("ok ", 0) != 0) {
        why = fmt::format("inference {}: {}", r, t);
        break;
      }
      checked += std::stoull(t.substr(3));
    }
    if (!why.empty()) {
      std::printf("step %d/%d: FAILED: %s\n", step, o.steps, why.c_str());
      failed = 1;
      break;
    }
    std::printf("step %d/%d: %s in %llu writes, slowest trainer %.1f ms (projection %.1f ms), %.2f GB/s; "
                "%llu bytes on %zu receivers verified against the reference\n",
                step, o.steps, plan::human_bytes(static_cast<double>(bytes)).c_str(),
                static_cast<unsigned long long>(writes), slowest * 1e3, proj * 1e3,
                slowest > 0 ? static_cast<double>(bytes) / slowest / 1e9 : 0.0, static_cast<unsigned long long>(checked), R);
    std::fflush(stdout);
  }
  for (auto& [pid, log] : kids) {
    int st = 0;
    const auto end = in_s(failed ? 1 : 30);
    while (waitpid(pid, &st, WNOHANG) == 0) {
      if (Clock::now() > end) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failed && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
      std::printf("worker %s exited with status %d\n", log.c_str(), st);
      failed = 1;
    }
  }
  if (failed) {
    std::printf("demo FAILED; worker logs in %s\n", logdir.c_str());
    return 1;
  }
  std::filesystem::remove_all(logdir);
  std::printf("demo OK: %d steps, every inference byte verified each step\n", o.steps);
  return 0;
}

}  // namespace weightcast::cli
