// What the API's parties share (peer.h).
#include "peer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "weightcast/exec/parts.h"
#include "weightcast/plan/check.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/session/records.h"

namespace weightcast::api::detail {

Result<std::unique_ptr<Job>> load_job(const JobConfig& cfg, bool whole_plan) {
  if (!transport::find_backend(cfg.backend))
    return invalid("JobConfig.backend is '{}'; expected {}", cfg.backend,
                   transport::backend_names());
  auto in = spec::load_inputs(cfg.trainer_spec, cfg.inference_spec, cfg.topology);
  if (!in) return in.status();
  if (!whole_plan) {  // a peer: its part comes from the controller
    auto j = std::make_unique<Job>();
    j->cfg = cfg;
    j->in = std::move(in).value();
    return j;
  }
  plan::Options opts;
  const transport::BackendInfo* backend = transport::find_backend(cfg.backend);
  // (checked by load_job before: never null here)
  opts.ipc_links = backend->links == transport::BackendInfo::Links::kSameHost;  // as the job runs
  opts.hybrid_links = backend->links == transport::BackendInfo::Links::kHybrid;
  opts.nccl_gathers = cfg.gathers == "nccl";
  opts.intra_domain_gathers_only = opts.intra_domain_gathers_only || opts.nccl_gathers;
  auto p = cfg.plan_file.empty() ? plan::make_plan(*in, opts) : plan::load_json(cfg.plan_file);
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

namespace {

Result<std::unique_ptr<transport::RendezvousClient>> join(Job& j, const char* role, uint32_t rank) {
  const auto colon = j.cfg.rendezvous.rfind(':');
  if (colon == std::string::npos)
    return invalid("JobConfig.rendezvous '{}' is not host:port", j.cfg.rendezvous);
  // A peer's session may write only its own keys: it presents its peer token (given, or derived
  // from the job token it was given).
  const std::string me = session::keys::identity(role, rank);
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

}  // namespace

Status open_peer(const JobConfig& cfg, PeerBase& p, const char* role, uint32_t rank) {
  auto j = load_job(cfg, false);
  if (!j) return j.status();
  p.job = std::move(j).value();
  auto c = join(*p.job, role, rank);
  if (!c) return c.status();
  p.rdv = std::move(c).value();
  if (const std::string dir = exec::StepTrace::directory(cfg.trace_dir); !dir.empty()) {
    // One file per peer: a second peer of the same rank in this process (another job), or a
    // file left by a predecessor with the same pid (pid namespaces), gets -2, -3, ...
    static std::atomic<int> opened{0};
    std::string path;
    for (int n = ++opened;; n = ++opened) {
      path = fmt::format("{}/{}-{}-{}{}.trace.json", dir, role, rank, ::getpid(),
                         n == 1 ? "" : fmt::format("-{}", n));
      if (!std::filesystem::exists(path)) break;
    }
    auto t = exec::StepTrace::open(path, fmt::format("{} {}", role, rank));
    if (!t)
      return Status(t.status().code(),
                    fmt::format("JobConfig.trace_dir: {}", t.status().message()));
    p.trace = std::move(t).value();
  }
  p.role = role;
  p.rank = rank;
  // Does the controller serve metrics? (It says so before any peer can join.)
  auto on = p.rdv->newer_now({session::keys::kMetricsOn}, {0}, in_s(cfg.deadline_s));
  if (!on) return on.status();
  p.publish_metrics = on->at(0).has_value();
  std::string mf = cfg.metrics_file;
  if (const char* env = std::getenv("WEIGHTCAST_METRICS_FILE"); mf.empty() && env) mf = env;
  if (!mf.empty()) {
    p.metrics.fd = ::open(mf.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (p.metrics.fd < 0)
      return Status(Code::kSystem, fmt::format("JobConfig.metrics_file {}: cannot open it: {}", mf,
                                               std::strerror(errno)));
  }
  return Status::ok();
}

PeerBase::Fd::~Fd() {
  if (fd >= 0) ::close(fd);
}

bool PeerBase::flush_trace() {
  if (!trace) return true;
  if (Status s = trace->flush(); !s) {
    core::log::warn(who(), core::log::kNoStep, "tracing stops: {}", s.message());
    trace.reset();
    return false;
  }
  return true;
}

void PeerBase::record_step(uint64_t step, uint32_t attempt, const Result<std::string>& record,
                           uint64_t bytes, double seconds) {
  if (record) {
    ++totals.ok;
    totals.bytes += bytes;
    totals.seconds += seconds;
  } else {
    ++totals.failed;
  }
  if (metrics.fd < 0 && !publish_metrics) return;  // (nothing to write: no record is built)
  nlohmann::json j = record ? nlohmann::json::parse(*record)
                            : nlohmann::json{{"error", record.status().message()}};
  j["role"] = role;
  j["rank"] = rank;
  j["pid"] = ::getpid();
  j["step"] = step;
  j["attempt"] = attempt;
  j["ok"] = static_cast<bool>(record);
  j["incarnation"] = incarnation;
  j["unix_s"] =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  j["totals"] = {{"ok", totals.ok},
                 {"failed", totals.failed},
                 {"bytes", totals.bytes},
                 {"seconds", totals.seconds}};
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  // One write per line: O_APPEND keeps lines of processes sharing the file whole.
  if (metrics.fd >= 0) (void)!::write(metrics.fd, line.data(), line.size());
  if (publish_metrics)
    if (Status s = rdv->put(session::keys::metrics(role.c_str(), rank), line); !s)
      core::log::warn(who(), step, "publishing the step's metrics: {}", s.message());
}

std::vector<transport::DomainConfig> nics(const JobConfig& c, uint32_t slot, uint32_t peers) {
  std::vector<transport::DomainConfig> v;
  for (const auto& a : c.nics) {
    transport::DomainConfig d;
    d.backend = c.backend;
    const transport::BackendInfo* b = transport::find_backend(c.backend);
    const bool verbs = b && b->nics_are_devices;
    d.provider = verbs ? a : c.provider;
    d.address = verbs ? "" : a;
    d.ipc_host = c.ipc_host;
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

uint32_t new_incarnation() {
  std::random_device rd;
  uint32_t k = 0;
  while (k == 0) k = rd() & 0x7fffffffu;
  return k;
}

Result<Incarnation> incarnation_of(transport::RendezvousClient& rdv, const char* role,
                                   uint32_t rank, Clock::time_point deadline, uint64_t after) {
  auto v = rdv.get_newer(session::keys::incarnation(role, rank), after, deadline);
  if (!v) return v.status();
  auto k = session::IncarnationRecord::decode(session::text_of(v->value));
  if (!k)
    return Status(k.status().code(), fmt::format("{} {}: {}", role, rank, k.status().message()));
  return Incarnation{k->value, v->version};
}

TensorInfo info(const std::string& name, bool scales, core::DType dt, const core::Shape& s) {
  TensorInfo t{name, scales, std::string(core::dtype_name(dt)), {}, 0, name};
  for (int i = 0; i < s.nd; ++i) t.shape.push_back(s[i]);
  t.bytes = static_cast<uint64_t>(s.numel()) * core::dtype_size(dt);
  return t;
}

Status publish_meta(PeerBase& p, const char* role, uint32_t rank, size_t tensors, uint64_t bytes) {
  return p.rdv->put(
      session::keys::meta(role, rank),
      session::PeerMeta{p.job->plan.inputs_digest, static_cast<uint32_t>(p.job->cfg.nics.size()),
                        static_cast<uint32_t>(tensors), bytes}
          .encode());
}

}  // namespace weightcast::api::detail
