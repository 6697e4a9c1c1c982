// Computes a Plan from validated inputs.
#pragma once

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan {

Result<Plan> make_plan(const spec::Inputs& in, const Options& opts);

// Digest of the inputs as the planner saw them (after parsing and --scale).
std::string digest_inputs(const spec::Inputs& in);

}  // namespace weightcast::plan
