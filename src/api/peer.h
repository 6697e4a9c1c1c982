// What the API's Controller, Sender and Receiver share (internal to src/api): a job's inputs and
// plan, a peer's rendezvous session, NIC configs and incarnations.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "weightcast/api/weightcast.h"
#include "weightcast/core/log.h"
#include "weightcast/exec/step_trace.h"
#include "weightcast/plan/plan.h"
#include "weightcast/session/keys.h"
#include "weightcast/spec/spec_parser.h"
#include "weightcast/transport/domain.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::api::detail {

using Clock = std::chrono::steady_clock;
inline Clock::time_point in_s(double s) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

// What every party of a job holds: the inputs, and the plan (the controller: the whole plan,
// computed or loaded; a peer: its own part, fetched from the controller through the rendezvous).
struct Job {
  JobConfig cfg;
  spec::Inputs in;
  plan::Plan plan;
};

// Loads the specs and (the controller, `whole_plan`) plans or loads the plan file, checked.
Result<std::unique_ptr<Job>> load_job(const JobConfig& cfg, bool whole_plan);

// What every Sender and Receiver starts with: the job (inputs + plan) and a rendezvous session.
struct PeerBase {
  std::unique_ptr<Job> job;
  std::unique_ptr<transport::RendezvousClient> rdv;
  std::unique_ptr<exec::StepTrace> trace;  // JobConfig.trace_dir: this process's spans
  // JobConfig.metrics_file, opened for appending (-1: none).
  struct Fd {
    int fd = -1;
    Fd() = default;
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd();
  } metrics;
  std::string role;
  uint32_t rank = 0, incarnation = 0;
  // Put every step record under keys::metrics too (the controller serves metrics).
  bool publish_metrics = false;
  struct Totals {
    uint64_t ok = 0, failed = 0, bytes = 0;
    double seconds = 0;
  } totals;  // over every step record of this peer, in each record as "totals"
  core::log::Who who() const { return {role, rank, incarnation}; }
  // Writes the step's spans; a trace that cannot be written (disk full) is closed with one
  // line on stderr, and tracing stays off for this peer: false then.
  bool flush_trace();
  // Appends one metrics line: `record` (a JSON object's text) with who and when added, and
  // puts it under keys::metrics when publish_metrics. Never fails the step: a put that fails
  // is logged.
  // `bytes` and `seconds` of a successful step go into the totals.
  void record_step(uint64_t step, uint32_t attempt, const Result<std::string>& record,
                   uint64_t bytes = 0, double seconds = 0);
};  // Loads the job and joins it as (role, rank): a peer-token session and this rank's part.
Status open_peer(const JobConfig& cfg, PeerBase& p, const char* role, uint32_t rank);

// `slot` numbers this peer among all `peers` of the job (trainers first): the verbs backend keeps
// one RC queue pair per peer slot.
std::vector<transport::DomainConfig> nics(const JobConfig& c, uint32_t slot, uint32_t peers);
uint32_t peer_count(const plan::Plan& p);

// A process's incarnation: new for every Sender / Receiver, so a restarted peer's keys and
// connections never alias its dead predecessor's (0 is the demo's first incarnation).
uint32_t new_incarnation();

// The incarnation peer (role, rank) runs now, if it was published after version `after`, with
// the version of that publication.
struct Incarnation {
  uint32_t value = 0;
  uint64_t version = 0;
};
Result<Incarnation> incarnation_of(transport::RendezvousClient& rdv, const char* role,
                                   uint32_t rank, Clock::time_point deadline, uint64_t after = 0);

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

TensorInfo info(const std::string& name, bool scales, core::DType dt, const core::Shape& s);

// A peer's metadata for the controller: "digest nics tensors bytes".
Status publish_meta(PeerBase& p, const char* role, uint32_t rank, size_t tensors, uint64_t bytes);

}  // namespace weightcast::api::detail
