// Checks a plan from outside (a file, a rank's part from the rendezvous) before anything runs
// it: every index in range, every offset and length inside its buffer with overflow-safe
// arithmetic, every projection consistent with its destination. Errors name the JSON path of the
// offending field ("writes[12]: ..."), so `weightcast verify --plan` can say what is wrong.
#pragma once

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan {

// What the plan alone can prove (plan::from_json runs it on every plan it loads).
Status check_plan(const Plan& p);
// What the specs add: the plan's names, tensor shapes and dtypes are the specs', direct writes
// read inside the sender's shard, gather pieces lie in their rank's shard, projection kinds match
// the dtypes. Runs check_plan(p) first.
Status check_plan(const spec::Inputs& in, const Plan& p);

}  // namespace weightcast::plan
