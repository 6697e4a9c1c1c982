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

// FP8 block quantization of `lead` row-major R x C matrices of floats: per block_rows x
// block_cols block (edge blocks smaller), scale = absmax / max(fp8) (1 for an all-zero block),
// FP8 = round-to-nearest-even(x / scale), saturating; scales are FP32, row-major per matrix.
// The reference the GPU kernel (exec/cuda_project.h) must match bit for bit.
// Runs the widest build this CPU has.
void quantize_blocks_cpu(const float* x, int64_t lead, int64_t R, int64_t C, int64_t block_rows,
                         int64_t block_cols, core::DType fp8, std::byte* out, std::byte* scales);

// The instruction sets quantize_blocks_cpu is built for; every build gives the same bytes (tests
// run each one the CPU has through quantize_blocks_cpu_on, which falls back to kBaseline).
enum class CpuIsa { kBaseline, kAvx2, kAvx512 };
bool cpu_has(CpuIsa isa);
void quantize_blocks_cpu_on(CpuIsa isa, const float* x, int64_t lead, int64_t R, int64_t C,
                            int64_t block_rows, int64_t block_cols, core::DType fp8, std::byte* out,
                            std::byte* scales);

}  // namespace weightcast::plan
