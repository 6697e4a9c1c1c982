// The end-to-end demo: a job driver, N trainer and M inference processes on this host. Every
// process is a plain user of the public API (api/weightcast.h): the driver runs the Controller,
// trainers a Sender, inference processes a Receiver. Every step the trainers change their
// weights and push them; every inference process checks every byte it received against the
// reference reshard before it reports. Generations, readiness, incarnations, relinking to
// restarted peers, drains and aborts are the library's; the driver only says which step to run,
// collects reports, restarts dead workers and retries a failed step (docs/failures.md), as an RL
// job's driver would. Workers are this same binary (`worker`).
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

#include "demo_common.h"
#include "weightcast/api/weightcast.h"
#include "weightcast/exec/binding.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/parts.h"
#include "weightcast/exec/safetensors.h"
#include "weightcast/exec/step_trace.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"

namespace weightcast::cli {

using namespace demo;  // NOLINT: the demo's own parts

namespace {

// The driver's side: worker processes, their logs, their reports.
struct Driver {
  const DemoOptions& o;
  std::string where, token;
  std::filesystem::path logdir;
  std::unique_ptr<transport::RendezvousClient> rdv;
  std::map<std::string, uint64_t> seen;  // report key -> version last read
  std::vector<pid_t> receivers;          // the inference workers (restarted in place)
  int round = 0;                         // the round whose reports are being collected
  int step = 0;                          // its step
  uint32_t receiver_restarts = 0;
  bool broken = false;                         // a worker could not be restarted
  std::map<std::pair<int, size_t>, int> died;  // (step, inference rank) -> deaths

  pid_t spawn(const std::string& role, size_t i, int first_round,
              const std::string& die_in_push = "") {
    const std::string log = (logdir / fmt::format("{}-{}.log", role, i)).string();
    std::vector<std::string> args{o.self,
                                  "worker",
                                  "--role",
                                  role,
                                  "--index",
                                  std::to_string(i),
                                  "--rdv",
                                  where,
                                  "--trainer",
                                  o.trainer,
                                  "--inference",
                                  o.inference,
                                  "--topology",
                                  o.topology,
                                  "--nics",
                                  std::to_string(o.nics),
                                  "--provider",
                                  o.provider,
                                  "--backend",
                                  o.backend,
                                  "--hosts",
                                  std::to_string(o.hosts),
                                  "--nic-list",
                                  o.nic_list,
                                  "--device",
                                  o.device,
                                  "--inference-device",
                                  o.inference_device,
                                  "--staging",
                                  o.staging,
                                  "--gpus",
                                  std::to_string(o.gpus),
                                  "--gathers",
                                  o.gathers,
                                  "--deadline",
                                  std::to_string(o.deadline_s),
                                  "--steps",
                                  std::to_string(o.steps),
                                  "--first-round",
                                  std::to_string(first_round),
                                  "--weights",
                                  o.weights,
                                  "--dump",
                                  o.dump};
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      // Only this worker's credential: it may write its own keys, no other rank's.
      ::setenv("WEIGHTCAST_TOKEN",
               transport::peer_token(token, role + "/" + std::to_string(i)).c_str(), 1);
      if (!die_in_push.empty()) ::setenv("WEIGHTCAST_DEBUG_DIE_IN_PUSH", die_in_push.c_str(), 1);
      if (!o.trace.empty()) ::setenv("WEIGHTCAST_TRACE_DIR", o.trace.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return pid;
  }
  // Waits until a (re)started worker is ready (prepared, or published); its error if it is not.
  std::string joined(const std::string& role, size_t i) {
    const std::string k = joined_key(role, i);
    auto v = rdv->get_newer(k, seen[k], in_s(o.deadline_s + 30));
    if (!v) return v.status().message();
    seen[k] = v->version;
    const std::string t(v->value.begin(), v->value.end());
    return t == "ok" ? "" : t.substr(t.find(' ') + 1);
  }
  // Waits for worker (role, i)'s report of `round`; meanwhile, an inference worker that died
  // (killed by an operator, crashed) is restarted at once to join this round, and its senders
  // link to the new process: found within a quarter second, not after a deadline.
  std::string report(const std::string& role, size_t i, int r, double wait_s) {
    const std::string k = report_key(role, i);
    const auto end = in_s(wait_s);
    for (;;) {
      auto v = report_of(*rdv, k, r, seen[k], std::min(end, in_s(0.25)));
      if (v) return *v;
      if (v.status().code() != Code::kTimeout || Clock::now() >= end)
        return "FAIL no report (" + v.status().message() + ")";
      restart_dead_receivers();
    }
  }
  void restart_dead_receivers() {
    for (size_t r = 0; r < receivers.size() && !broken; ++r) {
      int st = 0;
      if (receivers[r] < 0 || waitpid(receivers[r], &st, WNOHANG) != receivers[r]) continue;
      receivers[r] = -1;
      if (++died[{step, r}] > 2) {  // a worker that dies every time it starts is not retried
        std::printf("inference %zu died (%s) a third time during step %d; giving up\n", r,
                    WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exit", step);
        broken = true;
        return;
      }
      std::printf("inference %zu died (%s) during step %d; restarting it to rejoin the step\n", r,
                  WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exit", step);
      std::fflush(stdout);
      receivers[r] = spawn("inference", r, round);
      ++receiver_restarts;
      if (std::string e = joined("inference", r); !e.empty()) {
        std::printf("inference %zu could not restart: %s\n", r, e.c_str());
        broken = true;
      }
    }
  }
};

}  // namespace

// The controller's metrics after the last step: every peer's record says it finished `step`.
static std::string check_metrics(const api::Controller& ctl, size_t peers, int step) {
  auto t = ctl.metrics_text();
  if (!t) return t.status().message();
  size_t at_step = 0, ok = 0;
  std::istringstream is(*t);
  for (std::string line; std::getline(is, line);) {
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos || line[0] == '#') continue;
    const std::string name = line.substr(0, line.find('{'));
    const double v = std::atof(line.c_str() + sp + 1);
    if (name == "weightcast_step") at_step += v == step;
    if (name == "weightcast_step_ok") ok += v == 1;
  }
  if (at_step != peers || ok != peers)
    return fmt::format("{} of {} peers report step {}, {} report their last step ok", at_step,
                       peers, step, ok);
  return "";
}

// Every worker's trace file in `dir` (restarted workers' too) joined into dir/demo.trace.json.
static void merge_demo_trace(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n != "demo.trace.json" && n.size() > 11 && n.ends_with(".trace.json"))
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  auto merged = exec::merge_traces(files, false);
  const std::string out = dir + "/demo.trace.json";
  if (!merged) {
    std::printf("trace: %s\n", merged.status().message().c_str());
    return;
  }
  std::ofstream(out) << *merged;
  std::printf("trace of every step: %s (%zu processes; open it in ui.perfetto.dev)\n", out.c_str(),
              files.size());
}

int run_demo(const DemoOptions& o) {
  if (!o.trace.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.trace, ec);
    if (ec || !std::filesystem::is_directory(o.trace)) {
      std::fprintf(stderr, "weightcast: error: --trace %s: cannot create the directory\n",
                   o.trace.c_str());
      return 2;
    }
  }
  if (const transport::BackendInfo* b = transport::find_backend(o.backend);
      b && b->nics_are_devices && o.nic_list.empty()) {
    std::fprintf(stderr,
                 "weightcast: error: --backend %s needs --nic-list with the RDMA devices to use "
                 "(see `ibv_devices`), e.g. --nic-list mlx5_0 or rxe0,rxe1\n",
                 o.backend.c_str());
    return 2;
  }
  for (const auto& [flag, value] :
       {std::pair{"--device", o.device}, std::pair{"--inference-device", o.inference_device}})
    if (value == "cuda" && (!exec::cuda_built() || exec::cuda_devices() == 0)) {
      std::fprintf(stderr, "weightcast: error: %s cuda needs %s\n", flag,
                   exec::cuda_built() ? "a GPU, and the driver reports none"
                                      : "a CUDA build (no nvcc was found at configure time)");
      return 2;
    }
  if (o.gathers == "nccl" && o.device != "cuda") {
    std::fprintf(stderr,
                 "weightcast: error: --gathers nccl runs between GPU shards: add --device cuda\n");
    return 2;
  }
  for (const auto& [flag, used] : {std::pair{"--device", o.device == "cuda"},
                                   std::pair{"--inference-device", o.inference_device == "cuda"}})
    if (used && o.gpus > exec::cuda_devices()) {
      std::fprintf(stderr, "weightcast: error: --gpus %d with %s cuda, but the driver reports %d\n",
                   o.gpus, flag, exec::cuda_devices());
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
  const auto logdir =
      std::filesystem::temp_directory_path() / fmt::format("weightcast-demo-{}", getpid());
  std::filesystem::create_directories(logdir);
  // The plan with the demo's options goes to the Controller as a saved plan (JobConfig.plan_file).
  const std::string plan_path = (logdir / "plan.json").string();
  if (Status s = plan::save_json(*p, plan_path); !s) {
    std::fprintf(stderr, "weightcast: error: %s\n", s.message().c_str());
    return 1;
  }
  api::JobConfig job = job_config(o, "", "");
  job.plan_file = plan_path;
  auto ctl = api::Controller::start(job);  // fills in the rendezvous and a token
  if (!ctl) {
    std::fprintf(stderr, "weightcast: error: %s\n", ctl.status().message().c_str());
    return 1;
  }
  int metrics_port = -1;
  if (o.metrics_port >= 0) {
    auto mp = ctl->serve_metrics("127.0.0.1", static_cast<uint16_t>(o.metrics_port));
    if (!mp) {
      std::fprintf(stderr, "weightcast: error: --metrics-port: %s\n",
                   mp.status().message().c_str());
      return 1;
    }
    metrics_port = *mp;
    std::printf("metrics: http://127.0.0.1:%d/metrics\n", metrics_port);
  }
  Driver d{o, job.rendezvous, job.token, logdir, nullptr, {}, {}};
  const auto colon = job.rendezvous.rfind(':');
  auto rdv = transport::RendezvousClient::connect(
      job.rendezvous.substr(0, colon),
      static_cast<uint16_t>(std::stoi(job.rendezvous.substr(colon + 1))), job.token, in_s(10));
  if (!rdv) return 1;
  d.rdv = std::move(rdv).value();
  uint64_t moved = 0;
  for (const plan::Write& w : p->writes) moved += w.len;
  const std::string over =
      o.backend == "verbs" ? "ibverbs RC"
      : o.backend == "ipc" ? "same-host ipc"
      : o.backend.rfind("hybrid", 0) == 0
          ? fmt::format(
                "hybrid links (ipc within a host, {} between; {} posing "
                "host(s))",
                o.backend == "hybrid" ? "libfabric " + o.provider : std::string("ibverbs RC"),
                o.hosts)
          : "libfabric " + o.provider;
  std::printf(
      "demo: %zu trainer -> %zu inference processes over %s, %zu NIC(s) each (%s); plan %s: "
      "%zu writes and %zu gathers (host collective), %s per step\n",
      S, R, over.c_str(), nic_names(o).size(),
      fmt::format("{}", fmt::join(nic_names(o), ",")).c_str(), p->inputs_digest.c_str(),
      p->writes.size(), p->gathers.size(), plan::human_bytes(static_cast<double>(moved)).c_str());
  std::fflush(stdout);
  std::vector<pid_t> trainers(S, -1);
  std::vector<pid_t>& receivers = d.receivers;  // the driver restarts dead ones in place
  receivers.assign(R, -1);
  for (size_t r = 0; r < R; ++r) receivers[r] = d.spawn("inference", r, 1);
  // The fault: trainer 0 dies halfway through its writes of step K's first attempt.
  uint64_t mine = 0;
  for (const plan::Write& x : p->writes) mine += x.sender == 0;
  for (size_t s = 0; s < S; ++s)
    trainers[s] = d.spawn("trainer", s, 1,
                          s == 0 && o.kill_trainer_at_step > 0
                              ? fmt::format("{}:{}", o.kill_trainer_at_step, mine / 2)
                              : "");
  int failed = 0, round = 0;
  std::vector<std::string> why_start;
  for (size_t r = 0; r < R; ++r)
    if (std::string e = d.joined("inference", r); !e.empty())
      why_start.push_back(fmt::format("inference {}: {}", r, e));
  for (size_t s = 0; s < S; ++s)
    if (std::string e = d.joined("trainer", s); !e.empty())
      why_start.push_back(fmt::format("trainer {}: {}", s, e));
  if (!why_start.empty()) {
    std::printf("workers could not start:\n");
    for (const auto& y : why_start) std::printf("  %s\n", y.c_str());
    failed = 1;
  }
  std::map<std::string, std::pair<uint64_t, uint64_t>> rss;  // worker -> (after warm-up, last)
  auto note_rss = [&](const std::string& who, uint64_t kib, int step) {
    auto& e = rss[who];
    if (step <= 10 || e.first == 0) e.first = kib;
    e.second = kib;
  };
  uint32_t& receiver_restarts = d.receiver_restarts;
  uint64_t stale = 0, staged_bytes = 0;
  double staging_s = 0;  // the worst step's copy after its last arrival
  std::set<std::string> modes;
  for (int step = 1; step <= o.steps && !failed; ++step) {
    if (step == o.restart_receiver_at_step) {
      // Fault drill: inference 0 goes away between steps and comes back with fresh buffers.
      kill(receivers[0], SIGKILL);
      waitpid(receivers[0], nullptr, 0);
      receivers[0] = d.spawn("inference", 0, round + 1);
      ++receiver_restarts;
      if (std::string e = d.joined("inference", 0); !e.empty()) {
        std::printf("inference 0 could not restart: %s\n", e.c_str());
        failed = 1;
        break;
      }
      std::printf(
          "inference 0 killed after step %d and restarted (incarnation %u); trainers reconnect to "
          "it\n",
          step - 1, receiver_restarts);
    }
    if (step == o.kill_receiver_at_step) {
      // Fault drill: the last inference process dies between steps, unannounced (the driver
      // finds it while collecting the step's reports, as it would a crash).
      kill(receivers[R - 1], SIGKILL);
      std::printf("inference %zu killed (SIGKILL) before step %d, unannounced\n", R - 1, step);
    }
    for (int attempt = 1;; ++attempt) {
      ++round;
      d.round = round;
      d.step = step;
      const uint32_t restarts_before = receiver_restarts;
      (void)d.rdv->put(kRound, fmt::format("{} {}", round, step));
      double slowest = 0, proj = 0, nic_lo = 1e30, nic_hi = 0;
      uint64_t bytes = 0, writes = 0, checked = 0;
      std::vector<std::string> why;
      for (size_t r = 0; r < R; ++r) {
        const std::string t = d.report("inference", r, round, o.deadline_s + 30);
        if (t.rfind("ok ", 0) != 0) {
          why.push_back(fmt::format("inference {}: {}", r, t.substr(5)));
          continue;
        }
        std::istringstream is(t.substr(3));
        uint64_t c = 0, kib = 0, st = 0, sb = 0;
        double ws = 0, ss = 0;
        std::string mode;
        is >> c >> ws >> kib >> st >> mode >> sb >> ss;
        checked += c;
        stale += st;
        modes.insert(mode);
        staged_bytes += sb;
        staging_s = std::max(staging_s, ss);
        note_rss(fmt::format("inference {}", r), kib, step);
      }
      for (size_t s = 0; s < S; ++s) {
        const std::string t = d.report("trainer", s, round, why.empty() ? o.deadline_s + 30 : 2);
        if (t.rfind("ok ", 0) != 0) {
          why.push_back(fmt::format("trainer {}: {}", s, t.substr(5)));
          continue;
        }
        std::istringstream is(t.substr(3));
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
      note_rss("driver (controller and rendezvous)", rss_kib(), step);
      if (d.broken) {
        failed = 1;
        break;
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
      // Repair: restart trainers that died; once they are ready the step is retried on every
      // worker (the library keeps the failed attempt's writes from counting).
      d.restart_dead_receivers();  // (one that died during the round is back already)
      bool restarted = receiver_restarts != restarts_before && !d.broken;
      for (size_t s = 0; s < S; ++s) {
        int st = 0;
        if (waitpid(trainers[s], &st, WNOHANG) == trainers[s]) {
          std::printf("  trainer %zu died (%s); restarting it to rejoin at round %d\n", s,
                      WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "exit", round + 1);
          trainers[s] = d.spawn("trainer", s, round + 1);
          if (std::string e = d.joined("trainer", s); !e.empty()) {
            std::printf("  trainer %zu could not restart: %s\n", s, e.c_str());
            failed = 1;
          }
          restarted = true;
        }
      }
      if (failed || attempt >= 3 || !restarted) {
        failed = 1;
        break;
      }
    }
  }
  (void)d.rdv->put(kRound, "end");
  std::vector<pid_t> all = trainers;
  all.insert(all.end(), receivers.begin(), receivers.end());
  for (pid_t pid : all) {
    if (pid < 0) continue;  // reaped already (a worker that could not be restarted)
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
  std::string staged;
  if (staged_bytes)
    staged = fmt::format(
        "; {:.1f} MB staged through host memory, at most {:.2f} ms of copy after "
        "the last arrival of a step",
        1e-6 * static_cast<double>(staged_bytes), 1e3 * staging_s);
  if (!modes.empty())
    std::printf("receiver tensors: %s%s\n", fmt::format("{}", fmt::join(modes, ", ")).c_str(),
                staged.c_str());
  if (stale > 0)
    std::printf("late writes of failed attempts dropped by receivers: %llu\n",
                static_cast<unsigned long long>(stale));
  if (o.steps >= 50) {
    // Memory must not grow with steps: compare each process's RSS after warm-up with its last.
    int64_t worst = 0;
    std::string who;
    for (const auto& [w, v] : rss)
      if (static_cast<int64_t>(v.second) - static_cast<int64_t>(v.first) > worst) {
        worst = static_cast<int64_t>(v.second) - static_cast<int64_t>(v.first);
        who = w;
      }
    std::printf("RSS: largest growth after step 10 is %lld KiB (%s) over %d steps, %zu processes\n",
                static_cast<long long>(worst), who.empty() ? "none" : who.c_str(), o.steps,
                rss.size());
    if (worst > 4096) {
      std::printf("demo FAILED: memory grows with steps\n");
      failed = 1;
    }
  }
  if (!o.trace.empty()) merge_demo_trace(o.trace);
  if (metrics_port >= 0 && !failed) {
    if (std::string e = check_metrics(*ctl, S + R, o.steps); !e.empty()) {
      std::printf("demo FAILED: /metrics: %s\n", e.c_str());
      failed = 1;
    } else {
      std::printf(
          "metrics: all %zu peers report step %d done (weightcast_step, weightcast_step_ok)\n",
          S + R, o.steps);
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
