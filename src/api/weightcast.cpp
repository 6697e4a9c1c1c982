// The public API over the executor, receiver, planner and rendezvous.
#include "weightcast/api/weightcast.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <sstream>

#include "weightcast/exec/executor.h"
#include "weightcast/exec/keys.h"
#include "weightcast/exec/parts.h"
#include "weightcast/plan/check.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"

namespace weightcast::api {

namespace {

using Clock = std::chrono::steady_clock;
auto in_s(double s) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

// What every party of a job holds: the inputs, and the plan (the controller: the whole plan,
// computed or loaded; a peer: its own part, fetched from the controller through the rendezvous).
struct Job {
  JobConfig cfg;
  spec::Inputs in;
  plan::Plan plan;
};

Result<std::unique_ptr<Job>> load_job(const JobConfig& cfg, bool whole_plan) {
  auto in = spec::load_inputs(cfg.trainer_spec, cfg.inference_spec, cfg.topology);
  if (!in) return in.status();
  if (!whole_plan) {  // a peer: its part comes from the controller
    auto j = std::make_unique<Job>();
    j->cfg = cfg;
    j->in = std::move(in).value();
    return j;
  }
  auto p = cfg.plan_file.empty() ? plan::make_plan(*in, plan::Options{})
                                 : plan::load_json(cfg.plan_file);
  if (!p) return p.status();
  if (p->inputs_digest != plan::digest_inputs(*in))
    return invalid(
        "plan file {} was made for inputs {}, but these specs give {}: re-run `weightcast plan "
        "--json` on them",
        cfg.plan_file, p->inputs_digest, plan::digest_inputs(*in));
  if (!cfg.plan_file.empty())  // a file may have been edited: every offset against the specs
    if (Status st = plan::check_plan(*in, *p); !st)
      return Status(st.code(), fmt::format("plan file {}: {}", cfg.plan_file, st.message()));
  auto j = std::make_unique<Job>();
  j->cfg = cfg;
  j->in = std::move(in).value();
  j->plan = std::move(p).value();
  return j;
}

Result<std::unique_ptr<transport::RendezvousClient>> join(Job& j, const char* role, uint32_t rank) {
  const auto colon = j.cfg.rendezvous.rfind(':');
  if (colon == std::string::npos)
    return invalid("JobConfig.rendezvous '{}' is not host:port", j.cfg.rendezvous);
  // A peer's session may write only its own keys: it presents its peer token (given, or derived
  // from the job token it was given).
  const std::string me = exec::keys::identity(role, rank);
  std::string token = j.cfg.token;
  if (token.rfind("wcp1:", 0) == 0) {
    const std::string whose = token.substr(5, token.rfind(':') - 5);
    if (whose != me)
      return invalid("JobConfig.token is the peer token of {}, but this is {}", whose, me);
  } else {
    token = transport::peer_token(token, me);
  }
  auto c = transport::RendezvousClient::connect(
      j.cfg.rendezvous.substr(0, colon),
      static_cast<uint16_t>(std::stoi(j.cfg.rendezvous.substr(colon + 1))), token,
      in_s(j.cfg.deadline_s));
  if (!c) return c.status();
  auto part = exec::fetch_part(role, rank, plan::digest_inputs(j.in), **c, in_s(j.cfg.deadline_s));
  if (!part) return part.status();
  if (Status st = plan::check_plan(j.in, *part); !st)
    return Status(st.code(), fmt::format("{} {}'s part of the plan: {}", role, rank, st.message()));
  j.plan = std::move(part).value();
  return c;
}

// What every Sender and Receiver starts with: the job (inputs + plan) and a rendezvous session.
struct PeerBase {
  std::unique_ptr<Job> job;
  std::unique_ptr<transport::RendezvousClient> rdv;
};
Status open_peer(const JobConfig& cfg, PeerBase& p, const char* role, uint32_t rank) {
  auto j = load_job(cfg, false);
  if (!j) return j.status();
  p.job = std::move(j).value();
  auto c = join(*p.job, role, rank);
  if (!c) return c.status();
  p.rdv = std::move(c).value();
  return Status::ok();
}

// `slot` numbers this peer among all `peers` of the job (trainers first): the verbs backend keeps
// one RC queue pair per peer slot.
std::vector<transport::DomainConfig> nics(const JobConfig& c, uint32_t slot, uint32_t peers) {
  std::vector<transport::DomainConfig> v;
  for (const auto& a : c.nics) {
    transport::DomainConfig d;
    d.backend = c.backend;
    d.provider = c.backend == "verbs" ? a : c.provider;
    d.address = c.backend == "verbs" ? "" : a;
    d.rank = slot;
    d.max_peers = std::max(d.max_peers, peers);
    d.universe = peers;
    d.faults = c.faults;
    v.push_back(d);
  }
  return v;
}
uint32_t peer_count(const plan::Plan& p) {
  return static_cast<uint32_t>(p.senders.size() + p.receivers.size());
}

// Attempts of one step a Sender takes (its gathers' generation is step * this + attempt - 1).
constexpr uint32_t kMaxAttempts = 8;

// A process's incarnation: new for every Sender / Receiver, so a restarted peer's keys and
// connections never alias its dead predecessor's (0 is the demo's first incarnation).
uint32_t new_incarnation() {
  std::random_device rd;
  uint32_t k = 0;
  while (k == 0) k = rd() & 0x7fffffffu;
  return k;
}

// The incarnation peer (role, rank) runs now, if it was published after version `after`, with
// the version of that publication.
struct Incarnation {
  uint32_t value = 0;
  uint64_t version = 0;
};
Result<Incarnation> incarnation_of(transport::RendezvousClient& rdv, const char* role,
                                   uint32_t rank, Clock::time_point deadline, uint64_t after = 0) {
  auto v = rdv.get_newer(exec::keys::incarnation(role, rank), after, deadline);
  if (!v) return v.status();
  try {
    return Incarnation{
        static_cast<uint32_t>(std::stoul(std::string(v->value.begin(), v->value.end()))),
        v->version};
  } catch (const std::exception&) {
    return invalid("{} {}: malformed incarnation key", role, rank);
  }
}

// The incarnations the listed ranks of `role` run now, indexed by rank (0 for ranks not listed);
// `versions` (optional) gets the version each was published under. `who` names the asking peer.
template <typename Ranks>
Result<std::vector<uint32_t>> incarnations_of(transport::RendezvousClient& rdv, const char* role,
                                              const Ranks& ranks, Clock::time_point deadline,
                                              const std::string& who,
                                              std::map<uint32_t, uint64_t>* versions = nullptr) {
  std::vector<uint32_t> out;
  for (uint32_t r : ranks) {
    auto k = incarnation_of(rdv, role, r, deadline);
    if (!k)
      return Status(k.status().code(),
                    fmt::format("{}: {} {} never published: {}", who,
                                std::string(role) == "inference" ? "receiver" : role, r,
                                k.status().message()));
    out.resize(std::max<size_t>(out.size(), r + 1), 0);
    out[r] = k->value;
    if (versions) (*versions)[r] = k->version;
  }
  return out;
}

TensorInfo info(const std::string& name, bool scales, core::DType dt, const core::Shape& s) {
  TensorInfo t{name, scales, std::string(core::dtype_name(dt)), {}, 0, name};
  for (int i = 0; i < s.nd; ++i) t.shape.push_back(s[i]);
  t.bytes = static_cast<uint64_t>(s.numel()) * core::dtype_size(dt);
  return t;
}

}  // namespace

// A peer's metadata for the controller: "digest nics tensors bytes".
Status publish_meta(PeerBase& p, const char* role, uint32_t rank, size_t tensors, uint64_t bytes) {
  return p.rdv->put(exec::keys::meta(role, rank),
                    fmt::format("{} {} {} {}", p.job->plan.inputs_digest, p.job->cfg.nics.size(),
                                tensors, bytes));
}

struct Controller::Impl {
  std::unique_ptr<Job> job;
  std::unique_ptr<transport::RendezvousServer> server;
  std::unique_ptr<transport::RendezvousClient> watch;  // lost_peers' session
};

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
  return transport::peer_token(impl_->job->cfg.token, exec::keys::identity(role.c_str(), rank));
}
std::string Controller::plan_report() const { return plan::report(impl_->job->plan, "job"); }

Result<std::vector<std::string>> Controller::lost_peers() const {
  const Job& j = *impl_->job;
  const std::string host = j.cfg.rendezvous.substr(0, j.cfg.rendezvous.rfind(':'));
  if (!impl_->watch) {
    auto c =
        transport::RendezvousClient::connect(host, impl_->server->port(), j.cfg.token, in_s(10));
    if (!c) return c.status();
    impl_->watch = std::move(c).value();
  }
  std::vector<std::string> out;
  auto g = impl_->watch->get_newer("gone", 0, Clock::now());
  if (!g) return out;  // nobody went away
  const std::string gone(g->value.begin(), g->value.end());
  for (const char* role : {"trainer", "inference"}) {
    const auto n = std::string(role) == "trainer" ? j.plan.senders.size() : j.plan.receivers.size();
    for (uint32_t r = 0; r < n; ++r) {
      auto inc = incarnation_of(*impl_->watch, role, r, Clock::now());
      if (!inc) continue;  // never joined
      if (gone.find(exec::keys::session(role, r, inc->value) + "\n") != std::string::npos)
        out.push_back(fmt::format("{} {}", role, r));
    }
  }
  return out;
}

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
      auto v = (*c)->get(exec::keys::meta(role, r), deadline);
      if (!v) {
        missing.push_back(fmt::format("{} {}", role, r));
        continue;
      }
      PeerInfo p;
      p.role = role;
      p.rank = r;
      std::istringstream ss(std::string(v->begin(), v->end()));
      ss >> p.plan_digest >> p.nics >> p.tensors >> p.bytes;
      if (!ss) {
        wrong.push_back(fmt::format("{} {}: malformed metadata", role, r));
        continue;
      }
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
  uint32_t rank = 0, incarnation = 0;
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
  if (cfg.cuda_device >= 0 && cfg.cuda_device >= exec::cuda_devices())
    return invalid("JobConfig.cuda_device is {}, but this process sees {} CUDA device(s){}",
                   cfg.cuda_device, exec::cuda_devices(),
                   exec::cuda_built() ? "" : " (weightcast was built without CUDA)");
  auto ex = exec::TrainerExecutor::create(
      impl->job->in, impl->job->plan, rank, nics(cfg, rank, peer_count(impl->job->plan)),
      impl->rdv.get(), false,
      cfg.cuda_device >= 0 ? exec::MemoryKind::kCuda : exec::MemoryKind::kHost,
      std::max(cfg.cuda_device, 0));
  if (!ex) return ex.status();
  impl->ex = std::move(ex).value();
  impl->incarnation = new_incarnation();
  impl->ex->set_incarnation(impl->incarnation);
  // This session lives as long as the Sender: its close tells everyone the rank went away.
  if (Status s = impl->rdv->identify(exec::keys::session("trainer", rank, impl->incarnation)); !s)
    return s;
  if (Status s = impl->ex->publish(); !s) return s;  // peers may prepare before this one does
  const auto before = incarnation_of(*impl->rdv, "trainer", rank, Clock::now());
  if (Status s = impl->rdv->put(exec::keys::incarnation("trainer", rank),
                                std::to_string(impl->incarnation));
      !s)
    return s;
  if (before && before->value != impl->incarnation) {  // the dead predecessor's keys
    (void)impl->rdv->del(exec::keys::sender_address(rank, before->value));
    (void)impl->rdv->del(exec::keys::gather_buffer(rank, before->value));
  }
  // A predecessor of this rank (before a restart) may have written under these arms.
  if (auto u = impl->rdv->get(exec::keys::arms_used(rank), Clock::now()); u) {
    std::istringstream is(std::string(u->begin(), u->end()));
    is >> impl->last_step >> impl->attempt;
    uint32_t r = 0;
    uint64_t v = 0;
    char colon = 0;
    while (is >> r >> colon >> v && colon == ':') impl->used[r] = v;
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
  std::set<uint32_t> peers;  // trainers this rank gathers with
  for (const plan::Gather& g : m.job->plan.gathers) {
    bool in = g.root == m.rank;
    for (const auto& p : g.pieces) in = in || p.rank == m.rank;
    if (!in) continue;
    peers.insert(g.root);
    for (const auto& p : g.pieces) peers.insert(p.rank);
  }
  peers.erase(m.rank);
  auto trainer_inc = incarnations_of(*m.rdv, "trainer", peers, deadline, me, &m.gather_peers);
  if (!trainer_inc) return trainer_inc.status();
  if (Status s = m.ex->prepare(deadline, *recv_inc, *trainer_inc); !s) return s;
  m.prepared = true;
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
    std::string rec = fmt::format("{} {}", m.last_step, m.attempt);
    for (const auto& [r, v] : m.used) rec += fmt::format(" {}:{}", r, v);
    return m.rdv->put(exec::keys::arms_used(m.rank), rec);
  };
  if (Status s = record(); !s) return s;
  const auto gather_gen = static_cast<uint8_t>(step * kMaxAttempts + m.attempt - 1);
  // Gathers and projections start at once; the first write waits until every receiver armed an
  // attempt of this step that this process has not used yet (this rendezvous client is used by
  // nothing else during a push).
  auto ready = [&]() -> Result<std::map<uint32_t, exec::Armed>> {
    std::map<uint32_t, exec::Armed> armed;
    for (uint32_t r : m.receivers) {
      uint64_t after = m.used[r];
      for (;;) {
        auto v = m.rdv->get_newer(exec::keys::armed(r), after, in_s(dl));
        if (!v)
          return Status(v.status().code(),
                        fmt::format("step {}: receiver {} did not arm an attempt within {} s: {}",
                                    step, r, dl, v.status().message()));
        std::istringstream is(std::string(v->value.begin(), v->value.end()));
        uint64_t at = 0;
        unsigned gen = 0;
        uint32_t inc = 0;
        if (!(is >> at >> gen >> inc) || gen > 255)
          return Status(Code::kRemote, fmt::format("step {}: receiver {} armed with a malformed "
                                                   "value",
                                                   step, r));
        after = v->version;
        if (at < step) continue;  // an arm of an earlier step: wait for this one's
        if (at > step) return invalid("push({}): receiver {} is at step {} already", step, r, at);
        armed[r] = {static_cast<uint8_t>(gen), inc};
        m.used[r] = v->version;
        break;
      }
    }
    // Recorded before the first write: if this process dies now, its successor skips these.
    if (Status s = record(); !s) return s;
    return armed;
  };
  // A gather peer that restarted since the last push: link to its new incarnation (a quick look
  // per peer; the wait is zero).
  for (auto& [t, version] : m.gather_peers) {
    auto k = incarnation_of(*m.rdv, "trainer", t, Clock::now(), version);
    if (!k) continue;  // unchanged
    version = k->version;
    if (std::getenv("WEIGHTCAST_DEBUG_LOG"))
      std::fprintf(stderr, "trainer %u step %llu: trainer %u is now incarnation %u\n", m.rank,
                   static_cast<unsigned long long>(step), t, k->value);
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
  if (!rep) return rep.status();
  PushStats st;
  st.bytes = rep->bytes;
  st.writes = rep->writes;
  st.projections = rep->projects;
  st.seconds = rep->total_s;
  st.projection_seconds = rep->project_s;
  st.post_seconds = rep->post_s;
  st.nic_gbps = rep->nic_gbps;
  st.ready_seconds = rep->ready_s;
  st.gather_seconds = rep->gather_s;
  st.ring_wait_seconds = rep->ring_wait_s;
  st.mirror_seconds = rep->mirror_s;
  st.drain_seconds = rep->write_s;
  return st;
}

struct Receiver::Impl : PeerBase {
  std::unique_ptr<exec::InferenceReceiver> rc;
  std::set<std::pair<std::string, bool>> registered;  // (name, scales) register_tensor accepted
  bool published = false;
  uint32_t index = 0, incarnation = 0;
  uint8_t generation = 0;  // of the last attempt armed
  std::vector<uint32_t> senders;
  int die_after_arm = -1;  // test hook (WEIGHTCAST_DEBUG_DIE_AFTER_ARM)
  int cuda_device = -1;    // where its tensors live (-1: host memory)
};

Result<Receiver> Receiver::create(const JobConfig& cfg, uint32_t index) {
  if (cfg.cuda_device >= 0 && cfg.cuda_device >= exec::cuda_devices())
    return invalid("JobConfig.cuda_device is {}, but this process sees {} CUDA device(s){}",
                   cfg.cuda_device, exec::cuda_devices(),
                   exec::cuda_built() ? "" : " (weightcast was built without CUDA)");
  const std::map<std::string, exec::Staging> staging{{"auto", exec::Staging::kAuto},
                                                     {"always", exec::Staging::kAlways},
                                                     {"never", exec::Staging::kNever}};
  auto st = staging.find(cfg.receiver_staging);
  if (st == staging.end())
    return invalid("JobConfig.receiver_staging is '{}'; expected auto, always or never",
                   cfg.receiver_staging);
  auto impl = std::make_unique<Impl>();
  if (Status s = open_peer(cfg, *impl, "inference", index); !s) return s;
  const plan::Plan& pl = impl->job->plan;
  auto rc = exec::InferenceReceiver::create(
      impl->job->in, pl, index,
      nics(cfg, static_cast<uint32_t>(pl.senders.size()) + index, peer_count(pl)), impl->rdv.get(),
      false);
  if (!rc) return rc.status();
  impl->rc = std::move(rc).value();
  impl->index = index;
  impl->rc->set_staging(st->second, cfg.cuda_device);
  impl->cuda_device = cfg.cuda_device;
  impl->incarnation = new_incarnation();
  impl->rc->set_incarnation(impl->incarnation);
  if (Status s = impl->rdv->identify(exec::keys::session("inference", index, impl->incarnation));
      !s)
    return s;
  impl->generation = static_cast<uint8_t>(new_incarnation());  // any start; each arm moves on
  std::set<uint32_t> senders;
  for (const plan::Write& w : impl->job->plan.writes)
    if (impl->job->plan.dests[w.dest].receiver == index) senders.insert(w.sender);
  impl->senders.assign(senders.begin(), senders.end());
  // Test hook: WEIGHTCAST_DEBUG_DIE_AFTER_ARM=K kills receiver K with SIGKILL right after it
  // armed its first attempt (a receiver dying mid-step, after its senders were told to write).
  if (const char* d = std::getenv("WEIGHTCAST_DEBUG_DIE_AFTER_ARM"))
    impl->die_after_arm = std::atoi(d);
  uint32_t count = 0;
  uint64_t bytes = 0;
  for (const plan::DestTensor& d : impl->job->plan.dests)
    if (d.receiver == index) ++count, bytes += d.bytes;
  if (Status s = publish_meta(*impl, "inference", index, count, bytes); !s) return s;
  return Receiver(std::move(impl));
}
Receiver::Receiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Receiver::Receiver(Receiver&&) noexcept = default;
Receiver& Receiver::operator=(Receiver&&) noexcept = default;
Receiver::~Receiver() = default;

std::vector<TensorInfo> Receiver::tensors() const {
  std::vector<TensorInfo> out;
  const plan::Plan& p = impl_->job->plan;
  for (const plan::DestTensor& d : p.dests)
    if (d.receiver == impl_->index) {
      out.push_back(info(p.dest_names[d.param], d.scale, d.dtype, d.shape));
      const spec::DestParam& dp = impl_->job->in.inference.params[static_cast<size_t>(d.param)];
      if (d.scale && dp.quant) out.back().model_name = dp.quant->scale_name;
    }
  return out;
}
Status Receiver::register_tensor(const std::string& name, void* data, uint64_t bytes, bool scales) {
  const bool cuda = exec::pointer_kind(data) == exec::MemoryKind::kCuda;
  if (cuda != (impl_->cuda_device >= 0))
    return invalid("register_tensor('{}'): a {} pointer, but JobConfig.cuda_device is {} ({})",
                   name, cuda ? "CUDA device" : "host", impl_->cuda_device,
                   impl_->cuda_device >= 0
                       ? "tensors must be GPU memory on that device"
                       : "tensors must be host memory; set it to the tensors' GPU");
  if (impl_->registered.count({name, scales}))
    return invalid("register_tensor('{}'{}): registered already (receiver {})", name,
                   scales ? ", scales" : "", impl_->index);
  if (Status s = impl_->rc->bind_tensor(name, scales, data, bytes); !s) return s;
  impl_->registered.insert({name, scales});
  return Status::ok();
}
Status Receiver::publish() {
  if (Status s = impl_->rc->publish(); !s) return s;
  impl_->published = true;
  const auto before = incarnation_of(*impl_->rdv, "inference", impl_->index, Clock::now());
  // Last: a sender that sees this incarnation finds its address and descriptors published.
  if (Status s = impl_->rdv->put(exec::keys::incarnation("inference", impl_->index),
                                 std::to_string(impl_->incarnation));
      !s)
    return s;
  if (before && before->value != impl_->incarnation) {  // the dead predecessor's keys
    (void)impl_->rdv->del(exec::keys::receiver_address(impl_->index, before->value));
    (void)impl_->rdv->del(exec::keys::receiver_tensors(impl_->index, before->value));
  }
  return Status::ok();
}

Result<WaitStats> Receiver::wait(uint64_t step) {
  Impl& m = *impl_;
  if (!m.published)
    return invalid("receiver {}: wait({}) before publish(): register every tensor, then publish()",
                   m.index, step);
  const auto deadline = in_s(m.job->cfg.deadline_s);
  // Transports whose targets connect too (verbs): to every sender as it runs now, before
  // arming (a no-op once connected, and on libfabric).
  if (m.rc->connects_both_ends()) {
    auto inc = incarnations_of(*m.rdv, "trainer", m.senders, deadline,
                               fmt::format("receiver {}", m.index));
    if (!inc) return inc.status();
    if (Status s = m.rc->connect_senders(*inc, deadline); !s) return s;
  }
  // A fresh generation for every attempt: writes of earlier attempts (late, or of a sender that
  // died) are stale from here on.
  const uint8_t gen = ++m.generation;
  const uint64_t stale0 = m.rc->stale();
  m.rc->begin(gen);
  if (Status s = m.rdv->put(exec::keys::armed(m.index),
                            fmt::format("{} {} {}", step, unsigned{gen}, m.incarnation));
      !s)
    return s;
  if (m.die_after_arm == static_cast<int>(m.index)) ::kill(::getpid(), SIGKILL);
  auto w = m.rc->wait(gen, deadline);
  if (!w) return Status(w.status().code(), fmt::format("step {}: {}", step, w.status().message()));
  return WaitStats{
      w->bytes,        w->imms,     w->wait_s, gen, m.rc->stale() - stale0, m.rc->memory_mode(),
      w->staged_bytes, w->staging_s};
}

}  // namespace weightcast::api
