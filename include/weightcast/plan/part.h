// A rank's part of a plan: what one trainer or inference rank needs to run, so the controller
// plans once and each peer receives only its share (Kimi-K2's whole plan is 85 MB of JSON; a
// rank's part is a few hundred KB). A part is a Plan with the same tables of senders and
// receivers, names and options, and only the rank's gathers, projections, writes and dest
// tensors, renumbered; `dest_ids` maps each kept dest tensor to its index in the whole plan,
// which is the id receivers and trainers agree on when they exchange buffer descriptors.
#pragma once

#include "weightcast/plan/plan.h"

namespace weightcast::plan {

// Trainer `rank`: its projections and writes, its own tasks, and every gather whose root is
// this rank or a rank it sends gather pieces to (members lay out a root's buffer from the root's
// whole gather list, so the list comes whole and in order).
Plan trainer_part(const Plan& whole, uint32_t rank);

// Inference rank `receiver`: its dest tensors and the writes into them, without their source
// side (project / src_param / src_off are not kept: a receiver only counts and checks arrivals).
Plan inference_part(const Plan& whole, uint32_t receiver);

// The whole plan's index of dest tensor `d` of `p` (identity for a whole plan).
inline uint32_t global_dest(const Plan& p, uint32_t d) {
  return p.dest_ids.empty() ? d : p.dest_ids[d];
}

}  // namespace weightcast::plan
