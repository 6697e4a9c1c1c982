// The plan verifier: replays a plan on host memory (trainer shards filled from a deterministic
// pattern, gathers, projections, writes, imm counting) and compares every inference byte with a
// reference built straight from the full tensors, without any planner code.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan {

// The value of element `index` (row-major, global) of a trainer parameter at `step`, before
// rounding to the parameter's dtype. `seed` is pattern_seed(name).
uint64_t pattern_seed(const std::string& param);
float pattern_value(uint64_t seed, int64_t index, uint64_t step);

// Where trainer values come from: element `index` (row-major, global) of trainer param `param`
// at `step`, before rounding to the param's dtype. Null means pattern_value.
using ValueFn = std::function<float(int param, int64_t index, uint64_t step)>;

// Reference bytes of one destination tensor, from the specs alone.
std::vector<std::byte> reference_tensor(const spec::Inputs& in, const DestTensor& d,
                                        const Receiver& r, uint64_t step,
                                        const ValueFn& values = {});

struct VerifyResult {
  uint64_t bytes_checked = 0, writes = 0, gathers = 0, projects = 0;
  uint64_t tensors = 0;
};

// Where a long verify is: `fn` hears "senders replayed 12/256" and "tensors checked against the
// reference 900/84928" at most every `every_s` seconds, and once at the end of each.
struct VerifyProgress {
  std::function<void(const std::string&)> fn;
  double every_s = 2;
};

// Fails with a message naming the first mismatching tensor, element and writer, or the first
// imm count, coverage or bounds violation.
Result<VerifyResult> verify_plan(const spec::Inputs& in, const Plan& plan, uint64_t step = 1,
                                 const VerifyProgress& progress = {});

}  // namespace weightcast::plan
