// What the demo's driver (demo.cpp) and its workers (demo_worker.cpp) share: the job as every
// worker configures it, and the driver's own rendezvous keys.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "demo.h"
#include "weightcast/api/weightcast.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/spec_parser.h"
#include "weightcast/transport/domain.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::cli::demo {

using Clock = std::chrono::steady_clock;
inline Clock::time_point in_s(double s) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

Result<spec::Inputs> load(const DemoOptions& o);
plan::Options demo_plan_options(const DemoOptions& o);
std::vector<std::string> nic_names(const DemoOptions& o);
// Trainer values per step: the loaded weights scaled by (1 + (step-1)/8) as a stand-in for
// training, or the verifier's pattern when no weights are given.
Result<plan::ValueFn> value_source(const spec::Inputs& in, const std::string& weights);
uint64_t rss_kib();  // this process's resident memory
// The job as every worker configures it: token from the environment (never argv).
api::JobConfig job_config(const DemoOptions& o, const std::string& rdv, const std::string& token);

// The driver's own keys: the round to run ("ROUND STEP", or "end"), each worker's report of it
// ("ROUND ok ..." / "ROUND FAIL why") and that a (re)started worker is ready. Each is overwritten,
// never accumulated, so a 1000-step job keeps the rendezvous flat; readers wait for a version
// newer than the last they saw. Workers write under their own identity (their peer token allows
// nothing else).
inline constexpr const char* kRound = "demo/round";
std::string report_key(const std::string& role, size_t i);
std::string joined_key(const std::string& role, size_t i);
// Waits for `key`'s value for `round` (skipping older rounds' values).
Result<std::string> report_of(transport::RendezvousClient& rdv, const std::string& key, int round,
                              uint64_t& seen, Clock::time_point deadline);

}  // namespace weightcast::cli::demo
