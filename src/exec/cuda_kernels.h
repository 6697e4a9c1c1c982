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

// The fast path (no assembly, one read of every source byte): a projection whose inputs are
// whole rows of the box (no transpose, each input's last dim the box's whole last dim), at most
// kFastInputs of them, of one dtype. The box is `lead` row-major matrices; its row dims are all
// but the last (`nd1` of them, extents `ext`), and input k holds the rows lo..hi of them, its
// row (i0, i1, ...) at src + base + sum (i - lo) * stride elements. The output is the box,
// row-major, at `out` (C elements a row); quantization blocks are block_rows x 128.
constexpr int kFastInputs = 4;
struct FastInput {
  const void* src = nullptr;
  int64_t base = 0;
  int64_t lo[kMaxDims] = {}, hi[kMaxDims] = {}, stride[kMaxDims] = {};
};
struct FastJob {
  FastInput in[kFastInputs];
  int nin = 0, nd1 = 0;
  core::DType in_type = core::DType::kBF16;
  int64_t ext[kMaxDims] = {};
  int64_t C = 0;
  void* out = nullptr;
  core::DType out_type = core::DType::kBF16;
  bool quant = false;
  int64_t block_rows = 0, block_cols = 0;
  float* scales = nullptr;
};

// Whether `j` can run on the fast path (shapes, block sizes, 16-byte aligned rows); if not,
// why, for the tests.
bool fast_eligible(const FastJob& j, const char** why = nullptr);

// Runs every job (each one fast_eligible) on the calling thread's default stream, one launch per
// 16 jobs of one input dtype; returns once the kernels are queued.
Status convert_fast(const FastJob* jobs, int n);

}  // namespace weightcast::exec::kernels
