// CUDA projections (see cuda_project.h). The scalar conversions mirror core/dtype.cpp's integer
// encoders exactly (no hardware FP8 intrinsics: their rounding of out-of-range values differs),
// and divisions stay IEEE (no fast math), so results match the CPU reference bit for bit.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>

#include "cuda_kernels.h"
#include "weightcast/exec/cuda_project.h"

namespace weightcast::exec {

namespace {

using core::DType;

Status cuda_err(const char* call, cudaError_t e) {
  return Status(Code::kSystem,
                fmt::format("{}: {} ({})", call, cudaGetErrorName(e), cudaGetErrorString(e)));
}

__device__ float load(const void* p, DType t, int64_t i) {
  if (t == DType::kFP32) return static_cast<const float*>(p)[i];
  const uint16_t v = static_cast<const uint16_t*>(p)[i];
  if (t == DType::kBF16) return __uint_as_float(static_cast<uint32_t>(v) << 16);
  // FP16
  const uint32_t sign = (v & 0x8000u) << 16, mag = v & 0x7fffu;
  const uint32_t field = mag >> 10, m = mag & 0x3ffu;
  if (field == 0x1f)  // as core::fp16_to_float: one positive NaN, signed infinities
    return m ? __uint_as_float(0x7fc00000u) : __uint_as_float(0x7f800000u | sign);
  const float a =
      field == 0 ? ldexpf(static_cast<float>(m), -24)
                 : ldexpf(1.0f + static_cast<float>(m) / 1024.0f, static_cast<int>(field) - 15);
  return __uint_as_float(__float_as_uint(a) | sign);
}

// core/dtype.cpp's encode_magnitude: |a| to a code with `mbits` mantissa bits, RNE.
__device__ uint32_t encode_magnitude(float a, int mbits, int bias) {
  const int min_normal_exp = 1 - bias;
  if (a == 0.0f) return 0;
  const uint32_t u = __float_as_uint(a);
  const int e = static_cast<int>(u >> 23) - 127;
  if (e < min_normal_exp) return static_cast<uint32_t>(rintf(ldexpf(a, mbits - min_normal_exp)));
  const uint32_t m = u & 0x7fffffu;
  const int shift = 23 - mbits;
  const uint32_t r = (m + ((1u << (shift - 1)) - 1) + ((m >> shift) & 1)) >> shift;
  return (static_cast<uint32_t>(e + bias) << mbits) + r;
}

__device__ uint8_t to_fp8(float f, DType t) {
  const bool e4 = t == DType::kFP8E4M3;
  if (isnan(f)) return 0x7f;
  const uint8_t sign = signbit(f) ? 0x80 : 0;
  const float a = fabsf(f);
  const uint32_t top = e4 ? 0x7e : 0x7b;
  uint32_t code = isinf(a) ? top : encode_magnitude(a, e4 ? 3 : 2, e4 ? 7 : 15);
  if (code > top) code = top;
  return static_cast<uint8_t>(sign | code);
}

__device__ uint16_t to_bf16(float f) {
  const uint32_t u = __float_as_uint(f);
  if (isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

__device__ uint16_t to_fp16(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  if (isnan(f)) return sign | 0x7e00;
  const float a = fabsf(f);
  if (isinf(a)) return sign | 0x7c00;
  uint32_t code = encode_magnitude(a, 10, 15);
  if (code >= 0x7c00) code = 0x7c00;
  return static_cast<uint16_t>(sign | code);
}

__device__ void store(void* p, DType t, int64_t i, float f) {
  switch (t) {
    case DType::kFP32:
      static_cast<float*>(p)[i] = f;
      return;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = to_bf16(f);
      return;
    case DType::kFP16:
      static_cast<uint16_t*>(p)[i] = to_fp16(f);
      return;
    default:
      static_cast<uint8_t*>(p)[i] = to_fp8(f, t);
  }
}

// Elements block, block + blocks, ... (of blockDim.x each) of a cast.
__device__ void cast_part(const void* src, DType st, void* dst, DType dt, uint64_t n,
                          uint64_t block, uint64_t blocks) {
  for (uint64_t i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x)
    store(dst, dt, static_cast<int64_t>(i), load(src, st, static_cast<int64_t>(i)));
}

__global__ void cast_kernel(const void* src, DType st, void* dst, DType dt, uint64_t n) {
  cast_part(src, st, dst, dt, n, blockIdx.x, gridDim.x);
}

constexpr int kThreads = 256;

// One thread block per quantization block `blk` = (l * sr + i) * sc + j: absmax by reduction,
// then encode.
__device__ void quant_block(const void* src, DType st, int64_t R, int64_t C, int64_t br, int64_t bc,
                            int64_t sr, int64_t sc, DType fp8, float qmax, uint8_t* out,
                            float* scales, int64_t blk) {
  const int64_t j = blk % sc, i = (blk / sc) % sr, l = blk / (sc * sr);
  const int64_t r0 = i * br, r1 = min(R, r0 + br), c0 = j * bc, c1 = min(C, c0 + bc);
  const int64_t w = c1 - c0, n = (r1 - r0) * w;
  const int64_t base = l * R * C;
  float amax = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
    amax = fmaxf(amax, fabsf(load(src, st, base + (r0 + k / w) * C + c0 + k % w)));
  __shared__ float red[kThreads];
  red[threadIdx.x] = amax;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const float scale = red[0] > 0 ? __fdiv_rn(red[0], qmax) : 1.0f;
  if (threadIdx.x == 0) scales[blk] = scale;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const int64_t e = base + (r0 + k / w) * C + c0 + k % w;
    out[e] = to_fp8(__fdiv_rn(load(src, st, e), scale), fp8);
  }
}

__global__ void quant_kernel(const void* src, DType st, int64_t R, int64_t C, int64_t br,
                             int64_t bc, int64_t sr, int64_t sc, DType fp8, float qmax,
                             uint8_t* out, float* scales) {
  quant_block(src, st, R, C, br, bc, sr, sc, fp8, qmax, out, scales, blockIdx.x);
}

// Up to kBatch conversions in one launch: job k owns blocks [first[k], first[k + 1]), one per
// quantization block, or a grid-stride share of a cast.
constexpr int kBatch = 16;
constexpr int64_t kCastBlocks = 1024;  // per cast job, at most

struct ConvertBatch {
  kernels::ConvertJob job[kBatch];
  int64_t first[kBatch + 1];
  float qmax[kBatch];  // the FP8 format's largest value, per quantization job
  int n;
};

__global__ void convert_kernel(ConvertBatch b) {
  int k = 0;
  while (k + 1 < b.n && static_cast<int64_t>(blockIdx.x) >= b.first[k + 1]) ++k;
  const kernels::ConvertJob& c = b.job[k];
  const int64_t blk = blockIdx.x - b.first[k], blocks = b.first[k + 1] - b.first[k];
  if (!c.quant) {
    cast_part(c.x, DType::kFP32, c.out, c.out_type, static_cast<uint64_t>(c.n),
              static_cast<uint64_t>(blk), static_cast<uint64_t>(blocks));
    return;
  }
  const int64_t sr = (c.R + c.block_rows - 1) / c.block_rows,
                sc = (c.C + c.block_cols - 1) / c.block_cols;
  quant_block(c.x, DType::kFP32, c.R, c.C, c.block_rows, c.block_cols, sr, sc, c.out_type,
              b.qmax[k], static_cast<uint8_t*>(c.out), c.scales, blk);
}

// Up to kBatch inputs in one launch: grid row y runs input y.
struct AssembleBatch {
  kernels::AssembleInput in[kBatch];
  int64_t count[kBatch];
};

__global__ void assemble_kernel(AssembleBatch b, float* x) {
  const kernels::AssembleInput& in = b.in[blockIdx.y];
  const int64_t n = b.count[blockIdx.y];
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest = e, s = in.src_base, d = in.dst_base;
    for (int k = in.nd - 1; k >= 0; --k) {
      const int64_t j = rest % in.ext[k];
      rest /= in.ext[k];
      s += j * in.src_stride[k];
      d += j * in.dst_stride[k];
    }
    x[d] = load(in.src, in.dtype, s);
  }
}

bool is_float_in(DType t) { return t == DType::kBF16 || t == DType::kFP16 || t == DType::kFP32; }
bool is_fp8(DType t) { return t == DType::kFP8E4M3 || t == DType::kFP8E5M2; }

Status finish(const char* what, bool wait = true) {
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return cuda_err(what, e);
  if (!wait) return Status::ok();
  if (cudaError_t e = cudaStreamSynchronize(cudaStreamPerThread); e != cudaSuccess)
    return cuda_err("cudaStreamSynchronize", e);
  return Status::ok();
}

}  // namespace

namespace kernels {
Status assemble(const AssembleInput* inputs, int n, float* x) {
  // One launch per kBatch inputs (a fused qkv is one): launches, not bytes, set the time of the
  // many small projections of a step.
  for (int first = 0; first < n; first += kBatch) {
    AssembleBatch b{};
    int used = 0;
    int64_t most = 0;
    for (int i = first; i < n && i < first + kBatch; ++i) {
      int64_t count = 1;
      for (int k = 0; k < inputs[i].nd; ++k) count *= inputs[i].ext[k];
      if (count == 0) continue;
      b.in[used] = inputs[i];
      b.count[used++] = count;
      most = std::max(most, count);
    }
    if (used == 0) continue;
    const int64_t blocks = std::min<int64_t>((most + kThreads - 1) / kThreads, 65535 * 16);
    assemble_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(used)), kThreads>>>(
        b, x);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
      return cuda_err("assemble_kernel launch", e);
  }
  return finish("assemble_kernel", false);  // the conversion kernel follows on this stream
}

Status convert(const ConvertJob* jobs, int n) {
  for (int first = 0; first < n; first += kBatch) {
    ConvertBatch b{};
    int64_t blocks = 0;
    for (int i = first; i < n && i < first + kBatch; ++i) {
      const ConvertJob& c = jobs[i];
      int64_t need = 0;
      if (c.quant) {
        if (c.lead <= 0 || c.R <= 0 || c.C <= 0 || c.block_rows <= 0 || c.block_cols <= 0 ||
            !is_fp8(c.out_type))
          return invalid("convert: quantization job {} has an empty shape or block, or {}", i,
                         core::dtype_name(c.out_type));
        need = c.lead * ((c.R + c.block_rows - 1) / c.block_rows) *
               ((c.C + c.block_cols - 1) / c.block_cols);
      } else {
        if (!(is_float_in(c.out_type) || is_fp8(c.out_type)))
          return invalid("convert: cast job {} to {}", i, core::dtype_name(c.out_type));
        need = std::min<int64_t>((c.n + kThreads - 1) / kThreads, kCastBlocks);
      }
      if (need == 0) continue;
      b.job[b.n] = c;
      b.qmax[b.n] = core::quant_max(c.out_type);
      b.first[b.n++] = blocks;
      blocks += need;
    }
    if (b.n == 0) continue;
    b.first[b.n] = blocks;
    if (blocks > 0x7fffffff) return invalid("convert: {} blocks is too many", blocks);
    convert_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(b);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
      return cuda_err("convert_kernel launch", e);
  }
  return Status::ok();
}
}  // namespace kernels

Status cuda_cast(const void* src, DType src_type, void* dst, DType dst_type, uint64_t n,
                 bool wait) {
  if (!is_float_in(src_type) || !(is_float_in(dst_type) || is_fp8(dst_type)))
    return invalid("cuda_cast: {} -> {} is not supported", core::dtype_name(src_type),
                   core::dtype_name(dst_type));
  if (n == 0) return Status::ok();
  const uint64_t blocks = std::min<uint64_t>((n + kThreads - 1) / kThreads, 65535u * 16);
  cast_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(src, src_type, dst, dst_type, n);
  return finish("cast_kernel launch", wait);
}

Status cuda_quantize_blocks(const void* src, DType src_type, int64_t lead, int64_t R, int64_t C,
                            int64_t block_rows, int64_t block_cols, DType fp8, void* out,
                            float* scales, bool wait) {
  if (!is_float_in(src_type) || !is_fp8(fp8))
    return invalid("cuda_quantize_blocks: {} -> {} is not supported", core::dtype_name(src_type),
                   core::dtype_name(fp8));
  if (lead <= 0 || R <= 0 || C <= 0 || block_rows <= 0 || block_cols <= 0)
    return invalid("cuda_quantize_blocks: empty shape or block");
  const int64_t sr = (R + block_rows - 1) / block_rows, sc = (C + block_cols - 1) / block_cols;
  const int64_t blocks = lead * sr * sc;
  if (blocks > 0x7fffffff) return invalid("cuda_quantize_blocks: {} blocks is too many", blocks);
  quant_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(
      src, src_type, R, C, block_rows, block_cols, sr, sc, fp8, core::quant_max(fp8),
      static_cast<uint8_t*>(out), scales);
  return finish("quant_kernel launch", wait);
}

}  // namespace weightcast::exec
