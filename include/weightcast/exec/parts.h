// Distributing a plan: the controller publishes every rank's part (plan/part.h) through the
// rendezvous once; each trainer and inference rank fetches only its own, so no peer plans.
#pragma once

#include <chrono>

#include "weightcast/plan/plan.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::exec {

// Puts part/trainer/<r> and part/inference/<i> for every rank, as plan JSON in chunks that fit
// the rendezvous' value limit, and plan/digest.
Status publish_parts(const plan::Plan& whole, transport::RendezvousClient& rdv);

// Fetches and parses this rank's part; refuses a part made for other inputs than `digest` (the
// digest of the specs this peer loaded), naming both.
Result<plan::Plan> fetch_part(const std::string& role, uint32_t rank, const std::string& digest,
                              transport::RendezvousClient& rdv,
                              std::chrono::steady_clock::time_point deadline);

}  // namespace weightcast::exec
