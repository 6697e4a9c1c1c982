// The public API: the Controller and the Sender (the Receiver: receiver.cpp; what they share:
// peer.h).
#include "weightcast/api/weightcast.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "metrics.h"
#include "peer.h"
#include "weightcast/exec/executor.h"
#include "weightcast/exec/nccl_collective.h"
#include "weightcast/exec/parts.h"
#include "weightcast/plan/report.h"
#include "weightcast/session/keys.h"
#include "weightcast/session/records.h"

namespace weightcast::api {

using namespace detail;  // NOLINT: the API's own internals

namespace {
// Attempts of one step a Sender takes (its gathers' generation is step * this + attempt - 1).
constexpr uint32_t kMaxAttempts = 8;
}  // namespace

struct Controller::Impl {
  std::unique_ptr<Job> job;
  std::unique_ptr<transport::RendezvousServer> server;
  std::mutex mu;  // guards watch and named_lost (the metrics thread reads them too)
  std::unique_ptr<transport::RendezvousClient> watch;  // lost_peers' and metrics' session
  std::set<std::string> named_lost;                    // lost peers logged already
  std::unique_ptr<MetricsServer> metrics;              // declared last: stopped first

  // Every peer of the plan: joined, lost (with its incarnation's session closed), and its last
  // step record; in a few round trips whatever the job's size.
  Result<std::vector<PeerState>> peers();
  // The job-token session `watch`, connected on first use (under mu).
  Result<transport::RendezvousClient*> job_session();
  Result<std::string> text() {
    auto ps = peers();
    if (!ps) return ps.status();
    return prometheus_text(*ps, server->stats());
  }
};

Result<transport::RendezvousClient*> Controller::Impl::job_session() {
  if (!watch) {
    const JobConfig& cfg = job->cfg;
    auto c = transport::RendezvousClient::connect(
        cfg.rendezvous.substr(0, cfg.rendezvous.rfind(':')), server->port(), cfg.token, in_s(10));
    if (!c) return c.status();
    watch = std::move(c).value();
  }
  return watch.get();
}

Result<std::vector<PeerState>> Controller::Impl::peers() {
  std::lock_guard<std::mutex> g(mu);
  if (auto s = job_session(); !s) return s.status();
  std::vector<PeerState> out;
  std::vector<std::string> keys{"gone"};
  for (const char* role : {"trainer", "inference"}) {
    const auto n =
        std::string(role) == "trainer" ? job->plan.senders.size() : job->plan.receivers.size();
    for (uint32_t r = 0; r < n; ++r) {
      out.push_back({role, r, false, false, std::nullopt});
      keys.push_back(session::keys::incarnation(role, r));
      keys.push_back(session::keys::metrics(role, r));
    }
  }
  std::vector<std::optional<transport::RendezvousClient::Versioned>> got;
  constexpr size_t kChunk = 4096;
  for (size_t i = 0; i < keys.size(); i += kChunk) {
    std::vector<std::string> ks(
        keys.begin() + static_cast<long>(i),
        keys.begin() + static_cast<long>(std::min(keys.size(), i + kChunk)));
    auto v = watch->newer_now(ks, std::vector<uint64_t>(ks.size(), 0), in_s(10));
    if (!v) {
      watch.reset();  // a new session next time
      return v.status();
    }
    for (auto& x : *v) got.push_back(std::move(x));
  }
  const std::string gone = got[0] ? std::string(got[0]->value.begin(), got[0]->value.end()) : "";
  for (size_t p = 0; p < out.size(); ++p) {
    PeerState& ps = out[p];
    if (const auto& inc = got[1 + 2 * p]) {
      auto k = session::IncarnationRecord::decode(session::text_of(inc->value));
      ps.joined = static_cast<bool>(k);
      ps.lost = ps.joined && session::keys::gone(gone, ps.role, ps.rank, k->value);
    }
    if (const auto& rec = got[2 + 2 * p])
      ps.record = std::string(rec->value.begin(), rec->value.end());
    const std::string name = fmt::format("{} {}", ps.role, ps.rank);
    if (ps.lost && named_lost.insert(name).second)
      core::log::info({"controller"}, core::log::kNoStep,
                      "{} went away (its process exited or died)", name);
    if (!ps.lost) named_lost.erase(name);
  }
  return out;
}

Result<Controller> Controller::start(JobConfig& cfg, const std::string& bind_host) {
  auto j = load_job(cfg, true);
  if (!j) return j.status();
  if (cfg.token.empty()) {  // 128 bits from the kernel's generator
    uint8_t raw[16];
    if (::getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw))
      return Status(Code::kSystem, fmt::format("getrandom: {}", std::strerror(errno)));
    cfg.token = "wc-";
    for (uint8_t b : raw) cfg.token += fmt::format("{:02x}", b);
  }
  auto s = transport::RendezvousServer::start(bind_host, 0, cfg.token);
  if (!s) return s.status();
  cfg.rendezvous = fmt::format("{}:{}", bind_host, (*s)->port());
  auto impl = std::make_unique<Impl>();
  impl->job = std::move(j).value();
  impl->job->cfg = cfg;
  impl->server = std::move(s).value();
  auto c =
      transport::RendezvousClient::connect(bind_host, impl->server->port(), cfg.token, in_s(10));
  if (!c) return c.status();
  // Every rank's part, so peers never plan (and a saved plan reaches them unchanged).
  if (Status st = exec::publish_parts(impl->job->plan, **c); !st) return st;
  core::log::info({"controller"}, core::log::kNoStep,
                  "job of {} trainers and {} inference ranks, {} writes, plan {}; rendezvous at {}",
                  impl->job->plan.senders.size(), impl->job->plan.receivers.size(),
                  impl->job->plan.writes.size(), impl->job->plan.inputs_digest, cfg.rendezvous);
  return Controller(std::move(impl));
}
Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::Controller(Controller&&) noexcept = default;
Controller& Controller::operator=(Controller&&) noexcept = default;
Controller::~Controller() = default;
uint32_t Controller::senders() const {
  return static_cast<uint32_t>(impl_->job->plan.senders.size());
}
uint32_t Controller::receivers() const {
  return static_cast<uint32_t>(impl_->job->plan.receivers.size());
}
std::string Controller::peer_token(const std::string& role, uint32_t rank) const {
  return transport::peer_token(impl_->job->cfg.token, session::keys::identity(role.c_str(), rank));
}
std::string Controller::plan_report() const { return plan::report(impl_->job->plan, "job"); }

Result<std::vector<std::string>> Controller::lost_peers() const {
  auto ps = impl_->peers();
  if (!ps) return ps.status();
  std::vector<std::string> out;
  for (const PeerState& p : *ps)
    if (p.lost) out.push_back(fmt::format("{} {}", p.role, p.rank));
  return out;
}

Result<uint16_t> Controller::serve_metrics(const std::string& host, uint16_t port) {
  if (impl_->metrics)
    return invalid("serve_metrics: already serving on port {}", impl_->metrics->port());
  auto m = MetricsServer::start(host, port, [impl = impl_.get()] {
    auto t = impl->text();
    return t ? *t
             : fmt::format("# weightcast: the rendezvous did not answer: {}\n",
                           t.status().message());
  });
  if (!m) return m.status();
  {  // peers that join from now on publish their records
    std::lock_guard<std::mutex> g(impl_->mu);
    auto c = impl_->job_session();
    if (!c) return c.status();
    if (Status s = (*c)->put(session::keys::kMetricsOn, "1"); !s) return s;
  }
  impl_->metrics = std::move(m).value();
  core::log::info({"controller"}, core::log::kNoStep, "metrics at http://{}:{}/metrics", host,
                  impl_->metrics->port());
  return impl_->metrics->port();
}

Result<std::string> Controller::metrics_text() const { return impl_->text(); }

Result<std::vector<PeerInfo>> Controller::wait_for_peers(double deadline_s) const {
  const Job& j = *impl_->job;
  const auto deadline = in_s(deadline_s);
  const std::string host = j.cfg.rendezvous.substr(0, j.cfg.rendezvous.rfind(':'));
  auto c = transport::RendezvousClient::connect(host, impl_->server->port(), j.cfg.token, deadline);
  if (!c) return c.status();
  // What the plan says each peer must register.
  std::vector<std::pair<uint32_t, uint64_t>> want_t(j.plan.senders.size()),
      want_r(j.plan.receivers.size());
  for (const plan::DestTensor& d : j.plan.dests) {
    ++want_r[d.receiver].first;
    want_r[d.receiver].second += d.bytes;
  }
  for (uint32_t r = 0; r < want_t.size(); ++r) {
    const exec::SenderLayout l = exec::sender_layout(j.in, r);
    want_t[r] = {static_cast<uint32_t>(l.shards.size()), 0};
    for (const exec::ShardSlot& s : l.shards) want_t[r].second += s.bytes;
  }
  std::vector<PeerInfo> out;
  std::vector<std::string> missing, wrong;
  for (const char* role : {"trainer", "inference"}) {
    const auto& want = std::string(role) == "trainer" ? want_t : want_r;
    for (uint32_t r = 0; r < want.size(); ++r) {
      auto v = (*c)->get(session::keys::meta(role, r), deadline);
      if (!v) {
        missing.push_back(fmt::format("{} {}", role, r));
        continue;
      }
      PeerInfo p;
      p.role = role;
      p.rank = r;
      auto meta = session::PeerMeta::decode(session::text_of(*v));
      if (!meta) {
        wrong.push_back(fmt::format("{} {}: {}", role, r, meta.status().message()));
        continue;
      }
      p.plan_digest = meta->plan_digest;
      p.nics = meta->nics;
      p.tensors = meta->tensors;
      p.bytes = meta->bytes;
      if (p.plan_digest != j.plan.inputs_digest)
        wrong.push_back(fmt::format("{} {} runs plan {}, the controller's is {}", role, r,
                                    p.plan_digest, j.plan.inputs_digest));
      if (!out.empty() && p.nics != out.front().nics)
        wrong.push_back(fmt::format("{} {} has {} NIC(s), {} {} has {}: NIC groups must match",
                                    role, r, p.nics, out.front().role, out.front().rank,
                                    out.front().nics));
      if (p.tensors != want[r].first || p.bytes != want[r].second)
        wrong.push_back(fmt::format("{} {} holds {} tensors / {} B, the plan gives it {} / {} B",
                                    role, r, p.tensors, p.bytes, want[r].first, want[r].second));
      out.push_back(p);
    }
  }
  if (!missing.empty())
    return Status(
        Code::kTimeout,
        fmt::format("peers that did not join within {} s: {}{}", deadline_s,
                    fmt::join(missing, ", "),
                    wrong.empty() ? "" : fmt::format("; and: {}", fmt::join(wrong, "; "))));
  if (!wrong.empty()) return invalid("peers disagree with the plan: {}", fmt::join(wrong, "; "));
  return out;
}

struct Sender::Impl : PeerBase {
  std::unique_ptr<exec::TrainerExecutor> ex;
  std::set<std::string> registered;  // names register_tensor accepted
  bool prepared = false;
  std::set<uint32_t> receivers;
  // Readiness: an arm is used once, by this process or a dead predecessor of the same rank, so
  // each receiver's next arm must be newer than the last used (recorded under keys::arms_used
  // before the first write of every attempt, and read back when a restarted rank joins).
  std::map<uint32_t, uint64_t> used;  // receiver -> version of the last arm used
  // Attempts of the step pushed last (this process's, or its dead predecessor's): gathers between
  // trainers are tagged with {step, attempt}, so every trainer of the job retrying a step agrees
  // on the generation without talking, and nothing of an aborted attempt counts toward a retry.
  uint64_t last_step = 0;
  uint32_t attempt = 0;
  // Trainers this rank gathers with -> the version of their incarnation this rank links to.
  std::map<uint32_t, uint64_t> gather_peers;
  int die_step = -1;  // test hook (WEIGHTCAST_DEBUG_DIE_IN_PUSH=STEP:WRITES)
  uint64_t die_after = 0;
};

Result<Sender> Sender::create(const JobConfig& cfg, uint32_t rank) {
  auto impl = std::make_unique<Impl>();
  if (Status s = open_peer(cfg, *impl, "trainer", rank); !s) return s;
  if (cfg.gathers != "host" && cfg.gathers != "nccl")
    return invalid("JobConfig.gathers is '{}'; expected host or nccl", cfg.gathers);
  if (cfg.gathers == "nccl" && cfg.cuda_device < 0)
    return invalid(
        "JobConfig.gathers is nccl, but cuda_device is -1: NCCL gathers run between "
        "GPU shards");
  if (cfg.cuda_device >= 0 && cfg.cuda_device >= exec::cuda_devices())
    return invalid("JobConfig.cuda_device is {}, but this process sees {} CUDA device(s){}",
                   cfg.cuda_device, exec::cuda_devices(),
                   exec::cuda_built() ? "" : " (weightcast was built without CUDA)");
  auto ex = exec::TrainerExecutor::create(
      impl->job->in, impl->job->plan, rank, nics(cfg, rank, peer_count(impl->job->plan)),
      impl->rdv.get(), false,
      cfg.cuda_device >= 0 ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost,
      std::max(cfg.cuda_device, 0), cfg.gathers == "nccl");
  if (!ex) return ex.status();
  impl->ex = std::move(ex).value();
  impl->ex->set_trace(impl->trace.get());
  impl->incarnation = new_incarnation();
  impl->ex->set_incarnation(impl->incarnation);
  // This session lives as long as the Sender: its close tells everyone the rank went away.
  if (Status s = impl->rdv->identify(session::keys::session("trainer", rank, impl->incarnation));
      !s)
    return s;
  if (Status s = impl->ex->publish(); !s) return s;  // peers may prepare before this one does
  const auto before = incarnation_of(*impl->rdv, "trainer", rank, Clock::now());
  if (Status s = impl->rdv->put(session::keys::incarnation("trainer", rank),
                                session::IncarnationRecord{impl->incarnation}.encode());
      !s)
    return s;
  if (before && before->value != impl->incarnation) {  // the dead predecessor's keys
    (void)impl->rdv->del(session::keys::sender_address(rank, before->value));
    (void)impl->rdv->del(session::keys::gather_buffer(rank, before->value));
  }
  // A predecessor of this rank (before a restart) may have written under these arms.
  if (auto u = impl->rdv->get(session::keys::arms_used(rank), Clock::now()); u) {
    auto used = session::UsedArms::decode(session::text_of(*u));
    if (!used)
      return Status(used.status().code(),
                    fmt::format("trainer {}: its predecessor's {}: {}", rank,
                                session::keys::arms_used(rank), used.status().message()));
    impl->last_step = used->step;
    impl->attempt = used->attempt;
    impl->used = std::move(used->arms);
  }
  impl->rank = rank;
  // Test hook: WEIGHTCAST_DEBUG_DIE_IN_PUSH=STEP:WRITES makes push(STEP) post WRITES writes, then
  // SIGKILL this process (a trainer dying halfway through a step).
  if (const char* d = std::getenv("WEIGHTCAST_DEBUG_DIE_IN_PUSH")) {
    unsigned long long st = 0, w = 0;
    if (std::sscanf(d, "%llu:%llu", &st, &w) == 2) {
      impl->die_step = static_cast<int>(st);
      impl->die_after = w;
    }
  }
  uint64_t bytes = 0;
  for (const exec::ShardSlot& s : impl->ex->layout().shards) bytes += s.bytes;
  if (Status s = publish_meta(*impl, "trainer", rank, impl->ex->layout().shards.size(), bytes); !s)
    return s;
  for (const plan::Write& w : impl->job->plan.writes)
    if (w.sender == rank) impl->receivers.insert(impl->job->plan.dests[w.dest].receiver);
  core::log::info(impl->who(), core::log::kNoStep,
                  "joined: {} shards, {} bytes; writes to {} receivers over {} ({} NICs)",
                  impl->ex->layout().shards.size(), bytes, impl->receivers.size(), cfg.backend,
                  cfg.nics.size());
  return Sender(std::move(impl));
}
Sender::Sender(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Sender::Sender(Sender&&) noexcept = default;
Sender& Sender::operator=(Sender&&) noexcept = default;
Sender::~Sender() = default;

std::vector<TensorInfo> Sender::tensors() const {
  std::vector<TensorInfo> out;
  for (const exec::ShardSlot& s : impl_->ex->layout().shards) {
    const spec::Param& p = impl_->job->in.trainer.params[s.param];
    out.push_back(info(p.name, false, p.dtype, s.box.extents()));
  }
  return out;
}
Status Sender::register_tensor(const std::string& name, void* data, uint64_t bytes) {
  if (impl_->registered.count(name))
    return invalid("register_tensor('{}'): registered already (trainer {})", name, impl_->rank);
  if (Status s = impl_->ex->bind_shard(name, data, bytes); !s) return s;
  impl_->registered.insert(name);
  return Status::ok();
}
Status Sender::prepare() {
  Impl& m = *impl_;
  const auto deadline = in_s(m.job->cfg.deadline_s);
  // Link to every peer as it runs now (any of them may have restarted before this one).
  const std::string me = fmt::format("trainer {}", m.rank);
  auto recv_inc = incarnations_of(*m.rdv, "inference", m.receivers, deadline, me);
  if (!recv_inc) return recv_inc.status();
  std::set<uint32_t> peers;  // trainers this rank gathers with (on NCCL: its whole group)
  for (const plan::Gather& g : m.job->plan.gathers) {
    bool in = g.root == m.rank;
    for (const auto& p : g.pieces) in = in || p.rank == m.rank;
    if (!in) continue;
    peers.insert(g.root);
    for (const auto& p : g.pieces) peers.insert(p.rank);
  }
  if (m.job->cfg.gathers == "nccl")
    for (uint32_t r : exec::gather_group(m.job->in, m.rank)) peers.insert(r);
  peers.erase(m.rank);
  auto trainer_inc = incarnations_of(*m.rdv, "trainer", peers, deadline, me, &m.gather_peers);
  if (!trainer_inc) return trainer_inc.status();
  const auto t0 = Clock::now();
  if (Status s = m.ex->prepare(deadline, *recv_inc, *trainer_inc); !s) return s;
  m.prepared = true;
  core::log::info(m.who(), core::log::kNoStep,
                  "prepared: linked to {} receivers and {} gather peers in {:.3f} s",
                  m.receivers.size(), peers.size(),
                  std::chrono::duration<double>(Clock::now() - t0).count());
  return Status::ok();
}

Result<PushStats> Sender::push(uint64_t step) {
  const double dl = impl_->job->cfg.deadline_s;
  Impl& m = *impl_;
  if (!m.prepared)
    return invalid("trainer {}: push({}) before prepare(): register every tensor, then prepare()",
                   m.rank, step);
  // Which attempt of the step this is, recorded before any write (a restarted rank goes on
  // counting from its predecessor's).
  m.attempt = step == m.last_step ? m.attempt + 1 : 1;
  m.last_step = step;
  if (m.attempt > kMaxAttempts)
    return invalid("push({}): {} attempts of one step; at most {} (gather generations would wrap)",
                   step, m.attempt, kMaxAttempts);
  auto record = [&]() -> Status {
    return m.rdv->put(session::keys::arms_used(m.rank),
                      session::UsedArms{m.last_step, m.attempt, m.used}.encode());
  };
  if (Status s = record(); !s) return s;
  const auto gather_gen = static_cast<uint8_t>(step * kMaxAttempts + m.attempt - 1);
  // Gathers and projections start at once; the first write waits until every receiver armed an
  // attempt of this step that this process has not used yet (this rendezvous client is used by
  // nothing else during a push).
  // Whether the process of receiver `r` this rank is linked to went away (the rendezvous saw its
  // session close).
  auto receiver_gone = [&](uint32_t r) {
    auto g = m.rdv->get_newer("gone", 0, Clock::now());
    if (!g) return false;
    return session::keys::gone(session::text_of(g->value), "inference", r,
                               m.ex->receiver_incarnation(r));
  };
  auto ready = [&]() -> Result<std::map<uint32_t, exec::Armed>> {
    const auto t_ready = Clock::now();
    std::map<uint32_t, exec::Armed> armed;
    // Every receiver's arm in one round trip per 4096 receivers (they are usually there
    // already: receivers arm as soon as their last step ended); those not yet newer are waited
    // for one by one, and once one was waited for, the rest are asked again (an arm seen
    // before the wait may have been replaced by a newer one meanwhile).
    std::vector<std::optional<transport::RendezvousClient::Versioned>> seen;
    constexpr size_t kChunk = 4096;
    for (auto it = m.receivers.begin(); it != m.receivers.end();) {
      std::vector<std::string> keys;
      std::vector<uint64_t> afters;
      for (; it != m.receivers.end() && keys.size() < kChunk; ++it) {
        keys.push_back(session::keys::armed(*it));
        afters.push_back(m.used[*it]);
      }
      auto now = m.rdv->newer_now(keys, afters, in_s(dl));
      if (!now) return now.status();
      for (auto& v : *now) seen.push_back(std::move(v));
    }
    size_t i = 0;
    bool waited = false;
    const auto deadline = in_s(dl);
    for (uint32_t r : m.receivers) {
      uint64_t after = m.used[r];
      auto& first = seen[i++];
      if (waited) first.reset();
      bool dead = false;  // the process this rank is linked to for r went away meanwhile
      for (;;) {
        // Waited for in slices of a second: between them, whether r's process is gone (its
        // session closed), named at once and in the error; a restarted r may still arm.
        auto v =
            first.has_value()
                ? Result<transport::RendezvousClient::Versioned>(std::move(first).value())
                : m.rdv->get_newer(session::keys::armed(r), after, std::min(deadline, in_s(1)));
        waited = waited || !first.has_value();
        first.reset();
        if (!v && v.status().code() == Code::kTimeout && Clock::now() < deadline) {
          if (!dead && receiver_gone(r)) {
            dead = true;
            core::log::warn(m.who(), step,
                            "receiver {}'s process went away (its session closed); waiting up to "
                            "{} s for a restarted one to arm",
                            r, dl);
          }
          continue;
        }
        if (!v)
          return Status(v.status().code(),
                        fmt::format("step {}: receiver {} did not arm an attempt within {} s{}: {}",
                                    step, r, dl,
                                    dead || receiver_gone(r)
                                        ? " (its process went away: its rendezvous session "
                                          "closed, and no restarted one armed)"
                                        : "",
                                    v.status().message()));
        auto arm = session::ArmRecord::decode(session::text_of(v->value));
        if (!arm)
          return Status(arm.status().code(),
                        fmt::format("step {}: receiver {}: {}", step, r, arm.status().message()));
        after = v->version;
        if (arm->step < step) continue;  // an arm of an earlier step: wait for this one's
        if (arm->step > step)
          return invalid("push({}): receiver {} is at step {} already", step, r, arm->step);
        armed[r] = {arm->generation, arm->incarnation};
        m.used[r] = v->version;
        break;
      }
    }
    // Recorded before the first write: if this process dies now, its successor skips these.
    if (Status s = record(); !s) return s;
    if (m.trace)
      m.trace->span("reading the receivers' arms", exec::StepTrace::kReadiness, t_ready,
                    Clock::now(), gather_gen);
    return armed;
  };
  // A gather peer that restarted since the last push: link to its new incarnation (a quick look
  // per peer; the wait is zero).
  for (auto& [t, version] : m.gather_peers) {
    auto k = incarnation_of(*m.rdv, "trainer", t, Clock::now(), version);
    if (!k) continue;  // unchanged
    version = k->version;
    core::log::warn(m.who(), step, "trainer {} restarted (now incarnation {}): relinking", t,
                    k->value);
    if (Status s = m.ex->rejoin_trainer(t, k->value, in_s(dl)); !s)
      return Status(s.code(), fmt::format("step {}: relinking to restarted trainer {}: {}", step, t,
                                          s.message()));
  }
  if (m.die_step >= 0 && step == static_cast<uint64_t>(m.die_step)) {
    (void)m.ex->push(gather_gen, in_s(dl), m.die_after, ready);
    std::fflush(nullptr);
    ::kill(::getpid(), SIGKILL);
  }
  auto rep = m.ex->push(gather_gen, in_s(dl), UINT64_MAX, ready);
  if (m.trace) {  // the step's rate per NIC, then everything of this step to the file
    const auto now = Clock::now();
    if (rep)
      for (size_t n = 0; n < rep->nic_gbps.size(); ++n)
        m.trace->counter(fmt::format("NIC {} GB/s", n), now, rep->nic_gbps[n]);
    else
      m.trace->span(fmt::format("push({}) failed: {}", step, rep.status().message()),
                    exec::StepTrace::kStep, now, now, gather_gen);
    if (!m.flush_trace()) m.ex->set_trace(nullptr);  // (off now; the step itself stands)
  }
  if (!rep) {
    core::log::warn(m.who(), step, "attempt {} failed: {}", m.attempt, rep.status().message());
    m.record_step(step, m.attempt, rep.status());
    return rep.status();
  }
  PushStats st;
  st.bytes = rep->bytes;
  st.writes = rep->writes;
  st.projections = rep->projects;
  st.in_place_projections = rep->in_place;
  st.seconds = rep->total_s;
  st.projection_seconds = rep->project_s;
  st.post_seconds = rep->post_s;
  st.nic_gbps = rep->nic_gbps;
  st.nic_bytes = rep->nic_bytes;
  st.staging_peak_bytes = rep->staging_peak;
  st.reconnected = rep->rejoined;
  st.ready_seconds = rep->ready_s;
  st.gather_seconds = rep->gather_s;
  st.ring_wait_seconds = rep->ring_wait_s;
  st.mirror_seconds = rep->mirror_s;
  st.drain_seconds = rep->write_s;
  core::log::info(m.who(), step,
                  "attempt {}: {} bytes in {} writes, {:.3f} s (ready {:.3f}, gather {:.3f}, "
                  "projection {:.3f}, ring wait {:.3f}, drain {:.3f})",
                  m.attempt, st.bytes, st.writes, st.seconds, st.ready_seconds, st.gather_seconds,
                  st.projection_seconds, st.ring_wait_seconds, st.drain_seconds);
  m.record_step(step, m.attempt, metrics_json(st), st.bytes, st.seconds);
  return st;
}

std::string metrics_json(const PushStats& s) {
  return nlohmann::json{{"bytes", s.bytes},
                        {"writes", s.writes},
                        {"projections", s.projections},
                        {"in_place_projections", s.in_place_projections},
                        {"seconds", s.seconds},
                        {"stages",
                         {{"ready", s.ready_seconds},
                          {"gather", s.gather_seconds},
                          {"projection", s.projection_seconds},
                          {"ring_wait", s.ring_wait_seconds},
                          {"mirror", s.mirror_seconds},
                          {"drain", s.drain_seconds},
                          {"post", s.post_seconds}}},
                        {"nic_gbps", s.nic_gbps},
                        {"nic_bytes", s.nic_bytes},
                        {"staging_peak_bytes", s.staging_peak_bytes},
                        {"reconnected", s.reconnected}}
      .dump();
}

std::string metrics_json(const WaitStats& s) {
  return nlohmann::json{{"bytes", s.bytes},
                        {"immediates", s.immediates},
                        {"seconds", s.seconds},
                        {"generation", s.generation},
                        {"stale", s.stale},
                        {"mode", s.mode},
                        {"staged_bytes", s.staged_bytes},
                        {"staging_seconds", s.staging_s}}
      .dump();
}

}  // namespace weightcast::api
