// weightcast.plan/v1: the plan as JSON (docs/plan-format.md). Written by streaming (a 1T-param
// plan has ~10^5-10^6 writes), read back with full index validation.
#pragma once

#include <string>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"

namespace weightcast::plan {

// `extra`: more top-level members, as JSON text (`"simulation": {...}`); loaders ignore them.
std::string to_json(const Plan& plan, const std::string& extra = {});
Status save_json(const Plan& plan, const std::string& path, const std::string& extra = {});
Result<Plan> from_json(const std::string& text);
Result<Plan> load_json(const std::string& path);

}  // namespace weightcast::plan
