// Measuring a profile here: raw one-sided writes on loopback (writers in this process, targets in
// a forked child, as a job's senders and receivers are) and the plan's CPU projections, timed one
// by one.
#include "weightcast/sim/measure.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <memory>
#include <thread>

#include "weightcast/core/dtype.h"
#include "weightcast/plan/project.h"
#include "weightcast/transport/imm.h"
#include "weightcast/transport/imm_counters.h"
#include "weightcast/transport/nic_group.h"
#include "weightcast/transport/progress.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::sim {

namespace {
using Clock = std::chrono::steady_clock;

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// One side of a raw transfer: a rendezvous session, one loopback NIC and a registered buffer.
struct RawPeer {
  std::unique_ptr<transport::RendezvousClient> rdv;
  transport::ImmCounters counters;
  std::unique_ptr<transport::ProgressEngine> engine;
  std::vector<uint8_t> buf;
  transport::Region region;

  static Result<std::unique_ptr<RawPeer>> open(uint16_t port, uint64_t size, uint8_t fill) {
    auto p = std::make_unique<RawPeer>();
    p->buf.assign(size, fill);
    auto r = transport::RendezvousClient::connect("127.0.0.1", port, "raw",
                                                  Clock::now() + std::chrono::seconds(20));
    if (!r) return r.status();
    transport::DomainConfig d;
    d.address = "127.0.0.1";
    auto e = transport::ProgressEngine::start({d}, &p->counters);
    if (!e) return e.status();
    p->rdv = std::move(r).value();
    p->engine = std::move(e).value();
    auto g = p->engine->register_memory(p->buf.data(), p->buf.size(), transport::MemKind::kHost);
    if (!g) return g.status();
    p->region = *g;
    return p;
  }
};

Clock::time_point deadline() { return Clock::now() + std::chrono::seconds(120); }

// The targets' side, in the child: registers, publishes, counts three repetitions' immediates.
[[noreturn]] void targets_child(const WritePattern& pat, int fd) {
  const auto ns = static_cast<uint32_t>(pat.src_bytes.size());
  const auto nr = static_cast<uint32_t>(pat.dst_bytes.size());
  uint16_t port = 0;
  if (read(fd, &port, sizeof port) != sizeof port) _exit(1);
  std::vector<std::unique_ptr<RawPeer>> me;
  std::vector<std::vector<transport::Expect>> expect(nr);
  for (uint32_t r = 0; r < nr; ++r) {
    auto p = RawPeer::open(port, std::max<uint64_t>(pat.dst_bytes[r], 1), 0);
    if (!p) _exit(2);
    me.push_back(std::move(p).value());
    if (!me[r]->rdv->put("addr" + std::to_string(r), me[r]->engine->address()) ||
        !me[r]->rdv->put("region" + std::to_string(r),
                         transport::NicGroup::remote(me[r]->region).serialize()))
      _exit(3);
    for (uint32_t w = 0; w < ns; ++w) {
      uint64_t n = 0;
      for (const WritePattern::Op& op : pat.ops[w]) n += op.target == r;
      if (n) expect[r].push_back({0, static_cast<uint16_t>(w), n});
    }
  }
  for (int rep = 1; rep <= 3; ++rep) {
    for (auto& p : me) p->counters.begin_generation(static_cast<uint8_t>(rep));
    if (!me[0]->rdv->put("ready" + std::to_string(rep), "1")) _exit(3);
    for (uint32_t r = 0; r < nr; ++r)
      if (!me[r]->counters.wait(static_cast<uint8_t>(rep), expect[r], deadline())) _exit(4);
    if (!me[0]->rdv->put("done" + std::to_string(rep), "1")) _exit(3);
  }
  _exit(0);
}

Result<double> writers_side(const WritePattern& pat, transport::RendezvousServer& server) {
  const auto ns = static_cast<uint32_t>(pat.src_bytes.size());
  const auto nr = static_cast<uint32_t>(pat.dst_bytes.size());
  std::vector<std::unique_ptr<RawPeer>> me;
  uint64_t total = 0;
  for (uint32_t w = 0; w < ns; ++w) {
    auto p = RawPeer::open(server.port(), std::max<uint64_t>(pat.src_bytes[w], 1), 1);
    if (!p) return p.status();
    me.push_back(std::move(p).value());
    for (const WritePattern::Op& op : pat.ops[w]) total += op.len;
  }
  std::vector<transport::RemoteRegion> rr;
  std::vector<std::vector<uint32_t>> peer(ns);
  for (uint32_t r = 0; r < nr; ++r) {
    auto reg = me[0]->rdv->get("region" + std::to_string(r), deadline());
    if (!reg) return reg.status();
    auto parsed = transport::RemoteRegion::parse(*reg);
    if (!parsed) return parsed.status();
    rr.push_back(*parsed);
    auto addr = me[0]->rdv->get("addr" + std::to_string(r), deadline());
    if (!addr) return addr.status();
    for (uint32_t w = 0; w < ns; ++w) {
      auto id = me[w]->engine->connect(*addr);
      if (!id) return id.status();
      peer[w].push_back(*id);
    }
  }
  double best = 0;
  for (int rep = 1; rep <= 3; ++rep) {
    if (auto g = me[0]->rdv->get("ready" + std::to_string(rep), deadline()); !g) return g.status();
    const double t0 = now_s();
    std::vector<Status> results(ns);
    std::vector<std::thread> ts;
    for (uint32_t w = 0; w < ns; ++w)
      ts.emplace_back([&, w] {
        std::vector<transport::GroupWrite> ws;
        const uint32_t imm =
            transport::Imm{static_cast<uint8_t>(rep), 0, static_cast<uint16_t>(w)}.encode();
        for (const WritePattern::Op& op : pat.ops[w])
          ws.push_back({&me[w]->region, op.src_off, peer[w][op.target], &rr[op.target], op.dst_off,
                        op.len, true, imm});
        results[w] = me[w]->engine->wait(me[w]->engine->submit(ws), deadline());
      });
    for (auto& t : ts) t.join();
    for (const Status& st : results)
      if (!st) return st;
    if (auto d = me[0]->rdv->get("done" + std::to_string(rep), deadline()); !d) return d.status();
    if (rep > 1) best = std::max(best, static_cast<double>(total) / (now_s() - t0));
  }
  return best;
}

}  // namespace

WritePattern all_pairs(uint32_t writers, uint32_t targets, uint64_t size, bool fresh,
                       uint64_t per_pair) {
  WritePattern p;
  const uint64_t count = std::max<uint64_t>(8, per_pair / size);
  p.src_bytes.assign(writers, fresh ? count * targets * size : size);
  p.dst_bytes.assign(targets, fresh ? writers * count * size : size);
  p.ops.resize(writers);
  for (uint32_t w = 0; w < writers; ++w)
    for (uint64_t k = 0; k < count; ++k)
      for (uint32_t r = 0; r < targets; ++r)
        p.ops[w].push_back(
            {r, fresh ? (k * targets + r) * size : 0, fresh ? (w * count + k) * size : 0, size});
  return p;
}

WritePattern plan_writes(const plan::Plan& plan) {
  WritePattern p;
  p.src_bytes.assign(plan.senders.size(), 0);
  p.dst_bytes.assign(plan.receivers.size(), 0);
  p.ops.resize(plan.senders.size());
  for (uint32_t s = 0; s < plan.senders.size(); ++s)
    for (const plan::Task& t : plan.senders[s].tasks) {
      if (t.op != plan::Task::Op::kWrite) continue;
      const plan::Write& w = plan.writes[t.index];
      const uint32_t r = plan.dests[w.dest].receiver;
      p.ops[s].push_back({r, p.src_bytes[s], p.dst_bytes[r], w.len});
      p.src_bytes[s] += w.len;
      p.dst_bytes[r] += w.len;
    }
  return p;
}

Result<double> write_rate(const WritePattern& pat) {
  if (pat.src_bytes.empty() || pat.dst_bytes.empty())
    return Status(Code::kInvalidArgument, "write_rate: no writers or no targets");
  int pipefd[2];
  if (pipe(pipefd) != 0) return Status(Code::kSystem, "write_rate: pipe failed");
  const pid_t child = fork();
  if (child < 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return Status(Code::kSystem, "write_rate: fork failed");
  }
  if (child == 0) {
    close(pipefd[1]);  // so that the read sees EOF if the parent goes away first
    targets_child(pat, pipefd[0]);
  }
  close(pipefd[0]);
  auto server = transport::RendezvousServer::start("127.0.0.1", 0, "raw");
  Result<double> rate = server ? Result<double>(0.0) : Result<double>(server.status());
  if (server) {
    const uint16_t port = (*server)->port();
    if (write(pipefd[1], &port, sizeof port) != sizeof port)
      rate = Status(Code::kSystem, "write_rate: cannot hand the targets their port");
    else
      rate = writers_side(pat, **server);
  }
  close(pipefd[1]);  // a child still waiting for its port reads EOF and ends
  if (!rate) kill(child, SIGKILL);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (rate && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    return Status(Code::kSystem,
                  fmt::format("write_rate: the targets' process ended with {}{}",
                              WIFEXITED(status) ? "exit " : "signal ",
                              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)));
  return rate;
}

Result<LoopbackRates> measure_loopback(uint64_t large_bytes, uint64_t small_bytes,
                                       uint64_t per_pair,
                                       const std::function<void(const std::string&)>& progress) {
  LoopbackRates r;
  r.large_bytes = large_bytes;
  r.small_bytes = small_bytes;
  r.per_pair = per_pair;
  const auto say = [&](const std::string& what) {
    if (progress) progress(what);
  };
  say(fmt::format("1 writer -> 1 target, {} KiB writes", large_bytes >> 10));
  auto pair = write_rate(all_pairs(1, 1, large_bytes, false, per_pair));
  if (!pair) return pair.status();
  say(fmt::format("1 writer -> 1 target, {} KiB writes", small_bytes >> 10));
  auto small = write_rate(all_pairs(1, 1, small_bytes, false, per_pair));
  if (!small) return small.status();
  say(fmt::format("4 writers -> 2 targets, {} KiB writes from and to fresh memory",
                  large_bytes >> 10));
  auto host = write_rate(all_pairs(4, 2, large_bytes, true, per_pair));
  if (!host) return host.status();
  say(fmt::format("4 writers -> 2 targets, {} KiB writes", small_bytes >> 10));
  auto host_small = write_rate(all_pairs(4, 2, small_bytes, false, per_pair / 4));
  if (!host_small) return host_small.status();
  r.pair_bytes_per_s = *pair;
  r.pair_small_bytes_per_s = *small;
  r.host_bytes_per_s = *host;
  r.host_small_bytes_per_s = *host_small;
  say("rendezvous round trips: 1 client, then 8 at once");
  if (Status st = measure_rendezvous(r); !st) return st;
  return r;
}

Status measure_rendezvous(LoopbackRates& into) {
  auto server = transport::RendezvousServer::start("127.0.0.1", 0, "rdv");
  if (!server) return server.status();
  constexpr int kClients = 8, kGets = 400;
  std::vector<std::unique_ptr<transport::RendezvousClient>> cs;
  for (int c = 0; c < kClients; ++c) {
    auto cl =
        transport::RendezvousClient::connect("127.0.0.1", (*server)->port(), "rdv", deadline());
    if (!cl) return cl.status();
    cs.push_back(std::move(cl).value());
  }
  if (Status st = cs[0]->put("arm", "1 1 1"); !st) return st;
  // Each client's gets, back to back: the seconds they took, or the first failure.
  const auto gets = [&](int c, double& took) -> Status {
    const double t0 = now_s();
    for (int i = 0; i < kGets; ++i)
      if (auto v = cs[static_cast<size_t>(c)]->get("arm", deadline()); !v) return v.status();
    took = now_s() - t0;
    return Status::ok();
  };
  double one = 0;
  if (Status st = gets(0, one); !st) return st;
  into.rdv_rtt_us = one / kGets * 1e6;
  std::vector<double> took(kClients);
  std::vector<Status> res(kClients);
  std::vector<std::thread> ts;
  const double t0 = now_s();
  for (int c = 0; c < kClients; ++c)
    ts.emplace_back(
        [&, c] { res[static_cast<size_t>(c)] = gets(c, took[static_cast<size_t>(c)]); });
  for (auto& t : ts) t.join();
  const double all = now_s() - t0;
  for (const Status& st : res)
    if (!st) return st;
  into.rdv_server_us = all / (kClients * kGets) * 1e6;
  // Many-key requests of 128 arms each, 8 clients at once: what a key adds.
  constexpr int kKeys = 128, kMany = 40;
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back("arm" + std::to_string(i));
    if (Status st = cs[0]->put(keys.back(), "1 1 1"); !st) return st;
  }
  const std::vector<uint64_t> afters(kKeys, 0);
  ts.clear();
  const double m0 = now_s();
  for (int c = 0; c < kClients; ++c)
    ts.emplace_back([&, c] {
      for (int i = 0; i < kMany && res[static_cast<size_t>(c)]; ++i)
        if (auto v = cs[static_cast<size_t>(c)]->newer_now(keys, afters, deadline()); !v)
          res[static_cast<size_t>(c)] = v.status();
    });
  for (auto& t : ts) t.join();
  const double many = (now_s() - m0) / (kClients * kMany) * 1e6;
  for (const Status& st : res)
    if (!st) return st;
  into.rdv_key_us = std::max(0.0, many - into.rdv_server_us) / kKeys;
  return Status::ok();
}

Profile loopback_profile(const LoopbackRates& r) {
  Profile p;
  p.name = "loopback";
  p.nic_gbps = r.pair_bytes_per_s * 8 / 1e9;
  p.nic_efficiency = 1;
  const double small_s = static_cast<double>(r.small_bytes);
  p.write_us =
      std::max(0.0, small_s / r.pair_small_bytes_per_s - small_s / r.pair_bytes_per_s) * 1e6;
  p.latency_us = 0;
  p.host_bytes_per_s = r.host_bytes_per_s;
  p.host_write_us =
      r.host_small_bytes_per_s > 0
          ? std::max(0.0, small_s / r.host_small_bytes_per_s - small_s / r.host_bytes_per_s) * 1e6
          : 0;
  p.ready_rtt_us = r.rdv_rtt_us;
  p.ready_server_us = r.rdv_server_us;
  p.ready_key_us = r.rdv_key_us;
  p.sources["ready_key_us"] =
      "measured: 8 clients' many-key requests of 128 arms at once, beyond a one-key request";
  p.sources["host_write_us"] = fmt::format(
      "measured: 4 writers -> 2 targets, {} KiB writes ({:.2f} GB/s) against the host path",
      r.small_bytes >> 10, r.host_small_bytes_per_s / 1e9);
  p.sources["ready_rtt_us"] = "measured: 400 rendezvous gets of one client on loopback";
  p.sources["ready_server_us"] =
      "measured: 8 clients' 400 gets each at once: the server's seconds per request";
  p.shards_on_gpu = p.tensors_on_gpu = false;
  p.gather_piece_us = -1;
  p.host_path_on_cores = true;
  p.sources["host_path_on_cores"] = "loopback: the kernel's copies run on this host's cores";
  p.sources["gather_piece_us"] = "-1: the topology's gather_us (not measured)";
  p.sources["nic_gbps"] =
      fmt::format("measured: 1 writer -> 1 target, {} KiB writes on loopback", r.large_bytes >> 10);
  p.sources["write_us"] = fmt::format(
      "measured: 1 pair's {} KiB writes ({:.2f} GB/s) against its {} KiB ones ({:.2f} GB/s)",
      r.small_bytes >> 10, r.pair_small_bytes_per_s / 1e9, r.large_bytes >> 10,
      r.pair_bytes_per_s / 1e9);
  p.sources["host_bytes_per_s"] = fmt::format(
      "measured: 4 writers -> 2 targets, {} KiB writes from and to fresh memory (every loopback "
      "write is a copy by this host's CPUs)",
      r.large_bytes >> 10);
  return p;
}

Result<double> measure_projection_cpu(const spec::Inputs& in, const plan::Plan& plan,
                                      Profile& profile, std::byte fill) {
  if (plan.projects.empty()) return 0.0;
  // One source buffer big enough for any input, one staging buffer past every slot's end.
  uint64_t src_max = 1, staging_end = 1;
  std::vector<double> bytes(plan.projects.size());
  for (size_t i = 0; i < plan.projects.size(); ++i) {
    const plan::Project& q = plan.projects[i];
    const spec::DestParam& dp = in.inference.params[plan.dests[q.dest].param];
    double read = 0;
    for (const auto& inp : q.inputs) {
      const auto esz = core::dtype_size(in.trainer.params[dp.parts.at(inp.part).src].dtype);
      const auto b = static_cast<uint64_t>(inp.src.numel()) * esz;
      src_max = std::max(src_max, b);
      read += static_cast<double>(b);
    }
    const uint64_t scale_end =
        q.scale_dest >= 0 ? q.scale_off + static_cast<uint64_t>(q.scale_box.numel()) * 4 : 0;
    staging_end = std::max({staging_end, q.staging_off + q.out_bytes, scale_end});
    bytes[i] = read + static_cast<double>(q.out_bytes);
  }
  if (staging_end > (16ull << 30) || src_max > (16ull << 30))
    return Status(Code::kInvalidArgument,
                  fmt::format("measure_projection_cpu: the plan's staging ({} bytes) or largest "
                              "input ({} bytes) is over 16 GiB; measure on a smaller model",
                              staging_end, src_max));
  const std::vector<std::byte> src(src_max, fill);
  const plan::InputResolver resolve = [&](const plan::Project::Input& inp) {
    return plan::Held{inp.src, src.data()};
  };
  // On every core at once, as a host's senders project (memory bandwidth shared as in a step):
  // thread k takes projections k, k + T, ..., into staging of its own. A warm-up pass (pages
  // touched), then three timed ones; each projection's median counts.
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const unsigned threads = static_cast<unsigned>(std::clamp<uint64_t>(
      std::min<uint64_t>({cores, plan.projects.size(), (16ull << 30) / staging_end}), 1, cores));
  constexpr int kPasses = 4;
  std::vector<std::array<double, kPasses>> t(plan.projects.size());
  std::vector<std::vector<std::byte>> staging(threads, std::vector<std::byte>(staging_end));
  std::vector<Status> res(threads);
  double total = 0;
  for (int pass = 0; pass < kPasses; ++pass) {
    std::vector<std::thread> ts;
    const double t0 = now_s();
    for (unsigned k = 0; k < threads; ++k)
      ts.emplace_back([&, k] {
        for (size_t i = k; i < plan.projects.size() && res[k]; i += threads) {
          const double p0 = now_s();
          Status st = plan::project_cpu(in, plan, plan.projects[i], resolve, staging[k].data(),
                                        staging[k].size());
          if (!st)
            res[k] = Status(st.code(), fmt::format("measure_projection_cpu: projection {}: {}", i,
                                                   st.message()));
          t[i][static_cast<size_t>(pass)] = now_s() - p0;
        }
      });
    for (auto& th : ts) th.join();
    for (const Status& st : res)
      if (!st) return st;
    if (pass > 0) total += now_s() - t0;
  }
  // The rate from the larger half of the projections (bytes over seconds), the fixed cost from
  // the smaller half (the median of what each took beyond its bytes at that rate).
  std::vector<size_t> order(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    order[i] = i;
    std::sort(t[i].begin() + 1, t[i].end());
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return bytes[a] < bytes[b]; });
  double big_b = 0, big_t = 0;
  for (size_t j = order.size() / 2; j < order.size(); ++j) {
    big_b += bytes[order[j]];
    big_t += t[order[j]][2];
  }
  if (big_t <= 0 || big_b <= 0)
    return Status(Code::kInternal, "measure_projection_cpu: no time measured");
  const double rate = big_b / big_t;
  std::vector<double> extra;
  for (size_t j = 0; j < order.size() / 2; ++j)
    extra.push_back(std::max(0.0, t[order[j]][2] - bytes[order[j]] / rate));
  std::sort(extra.begin(), extra.end());
  profile.project_bytes_per_s = rate;
  profile.project_us = extra.empty() ? 0 : extra[extra.size() / 2] * 1e6;
  profile.cpu_cores = cores;
  profile.sources["cpu_cores"] = "this machine's hardware threads";
  profile.sources["project_bytes_per_s"] = profile.sources["project_us"] = fmt::format(
      "measured: the plan's {} CPU projections on {} threads at once; the rate from the larger "
      "half (bytes read + written over seconds), the fixed cost from the smaller half (median)",
      plan.projects.size(), threads);
  return total / (kPasses - 1);
}

}  // namespace weightcast::sim
