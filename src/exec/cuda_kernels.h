// Internal: the plain-data interface between the projection's host side (cuda_project_host.cpp,
// C++20, knows plans and specs) and its kernels (cuda_project.cu, nvcc's C++17).
#pragma once

#include <cstdint>

#include "weightcast/core/dtype.h"
#include "weightcast/core/status.h"

namespace weightcast::exec::kernels {

constexpr int kMaxDims = 6;

// One input box of a projection: element j (a multi-index over `ext`) is read at
// src + (src_base + sum j[k] * src_stride[k]) elements and lands in the float box at
// dst_base + sum j[k] * dst_stride[k] (the transpose of a part is in dst_stride).
struct AssembleInput {
  const void* src = nullptr;
  core::DType dtype = core::DType::kBF16;
  int nd = 0;
  int64_t ext[kMaxDims] = {};
  int64_t src_stride[kMaxDims] = {};
  int64_t dst_stride[kMaxDims] = {};
  int64_t src_base = 0, dst_base = 0;
};

// Runs every input into `x` (device floats), on the calling thread's default stream, one launch
// per 16 inputs; returns once the kernels are queued.
Status assemble(const AssembleInput* inputs, int n, float* x);

// The conversion of one assembled projection: the `n` floats at `x` into `out` as `out_type`
// (a cast), or with `quant` FP8 block quantization of `lead` row-major R x C matrices, FP32
// scales at `scales` (the bytes of cuda_cast / cuda_quantize_blocks).
struct ConvertJob {
  const float* x = nullptr;
  int64_t n = 0;
  void* out = nullptr;
  core::DType out_type = core::DType::kBF16;
  bool quant = false;
  int64_t lead = 0, R = 0, C = 0, block_rows = 0, block_cols = 0;
  float* scales = nullptr;
};

// Runs every job on the calling thread's default stream, one launch per 16 jobs (casts and
// quantizations mixed); returns once the kernels are queued.
Status convert(const ConvertJob* jobs, int n);

}  // namespace weightcast::exec::kernels
