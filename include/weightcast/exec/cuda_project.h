// Device-side projections, the GPU executor's building blocks: the same conversions as the CPU
// projection (plan/project.h), bit for bit, on data already in GPU memory. They run on the
// calling thread's default stream; with `wait` they return once the kernel finished, without it
// once it is launched (then a later copy on the same thread, or cuda_sync(), waits for it and
// reports its errors). Errors name the CUDA call. Without CUDA in the build they
// return an error that says so.
#pragma once

#include <cstdint>

#include "weightcast/core/dtype.h"
#include "weightcast/core/status.h"

namespace weightcast::exec {

// dst[i] = convert(src[i]) for n elements: BF16 / FP16 / FP32 in, BF16 / FP16 / FP32 / FP8 out
// (round to nearest even, FP8 saturating). Device pointers.
Status cuda_cast(const void* src, core::DType src_type, void* dst, core::DType dst_type, uint64_t n,
                 bool wait = true);

// FP8 block quantization of `lead` row-major R x C matrices in `src_type` (BF16 / FP16 / FP32):
// per block_rows x block_cols block, scale = absmax / max(fp8) (1 for an all-zero block), FP8 =
// RNE(x / scale) saturating; FP32 scales row-major per matrix. Same bytes as
// plan::quantize_blocks_cpu. Device pointers; `out` holds lead*R*C bytes.
Status cuda_quantize_blocks(const void* src, core::DType src_type, int64_t lead, int64_t R,
                            int64_t C, int64_t block_rows, int64_t block_cols, core::DType fp8,
                            void* out, float* scales, bool wait = true);

}  // namespace weightcast::exec
