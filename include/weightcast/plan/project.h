// CPU projection of one plan unit: assemble its dest box from source boxes (through the parts'
// transposes and concat offsets) and convert it into staging (copy, cast, or FP8 block
// quantization with FP32 absmax/max scales). Shared by the verifier's replay and the host
// executor, so both run exactly what a plan says.
#pragma once

#include <cstddef>
#include <functional>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan {

// Where an input's source box lives: the global box of the buffer holding it and its bytes
// (row-major, trainer dtype). Returning a null pointer fails the projection.
struct Held {
  core::Box box;
  const std::byte* data = nullptr;
};
using InputResolver = std::function<Held(const Project::Input&)>;

// Writes the unit's output (and scales) at staging + p.staging_off / p.scale_off.
Status project_cpu(const spec::Inputs& in, const Plan& plan, const Project& p,
                   const InputResolver& resolve, std::byte* staging, uint64_t staging_size);

}  // namespace weightcast::plan
