// CUDA projections (see cuda_project.h). The scalar conversions mirror core/dtype.cpp's integer
// encoders exactly (no hardware FP8 intrinsics: their rounding of out-of-range values differs),
// and divisions stay IEEE (no fast math), so results match the CPU reference bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
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

// ---- The fast path: whole rows, read once, 16 bytes a thread a row --------------------------

constexpr int kFastBatch = 16;
constexpr int kTileCols = 128;  // 16 threads of 8 elements
constexpr int kTileRows = 128;  // of a cast tile; a quantization tile is one block (<= 128 rows)
constexpr int kRowsPerPass = kThreads / 16;
constexpr int kPasses = kTileRows / kRowsPerPass;

struct FastBatch {
  kernels::FastJob job[kFastBatch];
  int64_t first[kFastBatch + 1];  // job k owns tiles [first[k], first[k + 1])
  float qmax[kFastBatch];
  int n;
};

// Eight values as bits: 16-bit types in one uint4, FP32 in two.
template <DType T>
struct Row8 {
  uint4 a, b;
};

template <DType T>
__device__ Row8<T> load8(const char* p) {
  Row8<T> r;
  r.a = *reinterpret_cast<const uint4*>(p);
  if constexpr (T == DType::kFP32) r.b = *(reinterpret_cast<const uint4*>(p) + 1);
  return r;
}

__device__ uint32_t word(const uint4& q, int i) {
  return i == 0 ? q.x : i == 1 ? q.y : i == 2 ? q.z : q.w;
}

// Value i of eight, as load() reads it (FP16 through the hardware, NaN made the reference's one
// positive quiet NaN).
template <DType T>
__device__ float value8(const Row8<T>& r, int i) {
  if constexpr (T == DType::kFP32) return __uint_as_float(word(i < 4 ? r.a : r.b, i & 3));
  const uint32_t w = word(r.a, i >> 1);
  const uint32_t h = (i & 1) ? w >> 16 : w & 0xffffu;
  if constexpr (T == DType::kBF16) return __uint_as_float(h << 16);
  const float f = __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
  return isnan(f) ? __uint_as_float(0x7fc00000u) : f;
}

// Two FP8 codes, the first in the low byte, by the hardware's RNE conversion; saturating to the
// largest finite value is what to_fp8 does with infinities and out-of-range values too. NaNs
// are not fixed here (see fp8x2_nan).
__device__ uint32_t fp8x2_hw(float a, float b, DType t) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE,
                                  t == DType::kFP8E4M3 ? __NV_E4M3 : __NV_E5M2);
#else
  return to_fp8(a, t) | static_cast<uint32_t>(to_fp8(b, t)) << 8;
#endif
}
// The same with NaN as to_fp8 writes it.
__device__ uint32_t fp8x2_nan(float a, float b, DType t) {
  uint32_t r = fp8x2_hw(a, b, t);
  if (isnan(a)) r = (r & 0xff00u) | 0x7fu;
  if (isnan(b)) r = (r & 0x00ffu) | 0x7f00u;
  return r;
}

// Two 16-bit codes by the hardware's RNE conversion (to_bf16 / to_fp16 for finite values and
// infinities; overflow to infinity as to_fp16), then NaN as the reference writes it.
__device__ uint32_t half2_bits(float a, float b, DType t) {
  uint32_t r;
  if (t == DType::kBF16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    r = *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(a, b);
    r = *reinterpret_cast<const uint32_t*>(&v);
  }
  if (isnan(a) || isnan(b)) {
    const uint32_t lo = t == DType::kBF16 ? to_bf16(a) : to_fp16(a);
    const uint32_t hi = t == DType::kBF16 ? to_bf16(b) : to_fp16(b);
    r = lo | hi << 16;
  }
  return r;
}

// Eight floats as `t` at `out` (8 elements aligned); `nan_free` when none of them is a NaN
// (the FP8 codes need no fixing).
__device__ void store8(char* out, DType t, const float (&f)[8], bool nan_free) {
  switch (t) {
    case DType::kFP32: {
      float4* o = reinterpret_cast<float4*>(out);
      o[0] = make_float4(f[0], f[1], f[2], f[3]);
      o[1] = make_float4(f[4], f[5], f[6], f[7]);
      return;
    }
    case DType::kBF16:
    case DType::kFP16: {
      uint32_t w[4];
      for (int i = 0; i < 4; ++i) w[i] = half2_bits(f[2 * i], f[2 * i + 1], t);
      *reinterpret_cast<uint4*>(out) = make_uint4(w[0], w[1], w[2], w[3]);
      return;
    }
    default: {
      uint32_t w[2];
      if (nan_free) {
        for (int i = 0; i < 2; ++i)
          w[i] = fp8x2_hw(f[4 * i], f[4 * i + 1], t) | fp8x2_hw(f[4 * i + 2], f[4 * i + 3], t)
                                                           << 16;
      } else {
        for (int i = 0; i < 2; ++i)
          w[i] = fp8x2_nan(f[4 * i], f[4 * i + 1], t) | fp8x2_nan(f[4 * i + 2], f[4 * i + 3], t)
                                                            << 16;
      }
      *reinterpret_cast<uint2*>(out) = make_uint2(w[0], w[1]);
    }
  }
}

// x / scale rounded to nearest even, as __fdiv_rn gives it, from the block's reciprocal `inv`
// (itself rounded to nearest): q0 = x * inv is within an ulp of the quotient and inv within half
// an ulp of 1 / scale, so one FMA correction with the exact remainder rounds correctly
// (Markstein's theorem). The remainder is exact when no term is subnormal: callers keep scale in
// [2^-80, FLT_MAX], so x is normal wherever the quotient reaches the FP8 range; the quotient of a
// smaller x is far under FP8's smallest subnormal whatever its last bit, and copysign keeps the
// sign of zeros.
__device__ float div_by_scale(float x, float scale, float inv) {
  const float q0 = x * inv;
  const float r = fmaf(-q0, scale, x);
  return copysignf(fmaf(r, inv, q0), x);
}

// Magnitude bits of value i of eight (sign cleared): for non-negative floats their order as
// unsigned integers is the floats' order, with every NaN above infinity. 16-bit types two to a
// word.
template <DType T>
__device__ uint32_t magnitudes(const Row8<T>& r, uint32_t m) {
  if constexpr (T == DType::kFP32) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      m = max(m, max(word(r.a, i) & 0x7fffffffu, word(r.b, i) & 0x7fffffffu));
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) m = __vmaxu2(m, word(r.a, i) & 0x7fff7fffu);
  }
  return m;
}

// The float whose magnitude bits are `m` (no NaN), and infinity's bits.
template <DType T>
__device__ float from_magnitude(uint32_t m) {
  if constexpr (T == DType::kFP32) return __uint_as_float(m);
  if constexpr (T == DType::kBF16) return __uint_as_float(m << 16);
  return __half2float(__ushort_as_half(static_cast<unsigned short>(m)));
}
template <DType T>
constexpr uint32_t kInfBits = T == DType::kFP32   ? 0x7f800000u
                              : T == DType::kBF16 ? 0x7f80u
                                                  : 0x7c00u;

// One tile per thread block: rows [r0, r1) x columns [c0, c0 + 128) of matrix l of job k. Each
// thread owns 8 columns of up to kPasses rows, loaded once into registers; a quantization tile
// is one block, its absmax reduced over the thread block before the codes are written.
// (Registers capped for three resident blocks a multiprocessor with 16-bit inputs: the loads of
// other blocks hide each block's reduction; FP32 inputs need twice the registers. Index
// arithmetic is 32-bit where it can be: a 64-bit division costs a tile's worth of conversions.)
template <DType T, bool Quant>
__global__ void __launch_bounds__(kThreads, T == DType::kFP32 ? 2 : 3)
    fast_kernel(const __grid_constant__ FastBatch b) {
  int k = 0;
  while (k + 1 < b.n && static_cast<int64_t>(blockIdx.x) >= b.first[k + 1]) ++k;
  const kernels::FastJob& j = b.job[k];
  const int last = j.nd1 - 1;
  const int64_t R = j.ext[last], C = j.C;
  const int64_t TR = Quant ? j.block_rows : kTileRows;
  // Tile counts and indices fit 32 bits (convert_fast refuses more than 2^31 - 1 tiles).
  const uint32_t nr = static_cast<uint32_t>((R + TR - 1) / TR),
                 nc = static_cast<uint32_t>((C + kTileCols - 1) / kTileCols);
  uint32_t t = blockIdx.x - static_cast<uint32_t>(b.first[k]);
  const uint32_t jc = t % nc;
  t /= nc;
  const uint32_t ir = t % nr, l = t / nr;
  // Which inputs hold matrix l, and where its row 0 would be in each: input 0 in every thread
  // (no barrier before the loads of a tile with one input), the others through shared memory.
  __shared__ int64_t s_off[kernels::kFastInputs];
  __shared__ bool s_in[kernels::kFastInputs];
  auto locate = [&](int n, bool& inside) {
    const kernels::FastInput& in = j.in[n];
    uint32_t rest = l;
    int64_t off = in.base;
    inside = true;
    for (int d = last - 1; d >= 0; --d) {
      // l < 2^31 - 1, so a longer extent leaves it whole.
      const uint32_t e = static_cast<uint32_t>(j.ext[d] < 0x7fffffff ? j.ext[d] : 0x7fffffff);
      const int64_t i = rest % e;
      rest /= e;
      inside = inside && i >= in.lo[d] && i < in.hi[d];
      off += (i - in.lo[d]) * in.stride[d];
    }
    return off - in.lo[last] * in.stride[last];
  };
  bool in0 = false;
  const int64_t off0 = locate(0, in0);
  if (j.nin > 1) {  // the same for the whole block
    if (threadIdx.x < j.nin) {
      bool inside = false;
      s_off[threadIdx.x] = locate(static_cast<int>(threadIdx.x), inside);
      s_in[threadIdx.x] = inside;
    }
    __syncthreads();
  }
  constexpr int esize = T == DType::kFP32 ? 4 : 2;
  const int g = threadIdx.x & 15, sub = threadIdx.x >> 4;
  const int64_t c = static_cast<int64_t>(jc) * kTileCols + g * 8,
                r0 = static_cast<int64_t>(ir) * TR + sub, r1 = min(R, ir * TR + TR);
  // This thread's rows are r0, r0 + 16, ...: np of them (none past the matrix's last column).
  const int np =
      c < C && r0 < r1 ? static_cast<int>((r1 - r0 + kRowsPerPass - 1) / kRowsPerPass) : 0;
  // One input holds the whole tile: straight loads.
  const bool one = j.nin == 1 || (in0 && j.in[0].lo[last] <= ir * TR && j.in[0].hi[last] >= r1);
  const char* p0 =
      static_cast<const char*>(j.in[0].src) + (off0 + r0 * j.in[0].stride[last] + c) * esize;
  const int64_t step = kRowsPerPass * j.in[0].stride[last] * esize;
  const int osize = j.out_type == DType::kFP32                                 ? 4
                    : j.out_type == DType::kBF16 || j.out_type == DType::kFP16 ? 2
                                                                               : 1;
  char* const o0 = static_cast<char*>(j.out) + ((l * R + r0) * C + c) * osize;
  const int64_t ostep = kRowsPerPass * C * osize;
  // Pass p's eight elements (p < np).
  auto row = [&](int p) -> const char* {
    if (one) return p0 + p * step;
    const int64_t r = r0 + p * kRowsPerPass;
    int in = 0;
    while (in + 1 < j.nin && !(s_in[in] && r >= j.in[in].lo[last] && r < j.in[in].hi[last])) ++in;
    return static_cast<const char*>(j.in[in].src) +
           (s_off[in] + r * j.in[in].stride[last] + c) * esize;
  };
  Row8<T> v[kPasses];
  if (one && np == kPasses) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) v[p] = load8<T>(p0 + p * step);
  } else {
#pragma unroll
    for (int p = 0; p < kPasses; ++p)
      if (p < np) v[p] = load8<T>(row(p));
  }
  if constexpr (!Quant) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      if (p >= np) continue;
      float f[8];
      bool free = true;
      for (int i = 0; i < 8; ++i) {
        f[i] = value8<T>(v[p], i);
        free = free && !isnan(f[i]);
      }
      store8(o0 + p * ostep, j.out_type, f, free);
    }
    return;
  }
  // The absmax ignores NaNs (as fmaxf does). It is reduced as magnitude bits, where a NaN is
  // above infinity: a block that holds one takes a second, float reduction. The rare paths (that
  // one, and the exact divisions) read their rows again rather than hold unrolled code: a lean
  // kernel keeps the instruction cache for the common one.
  __shared__ uint32_t red[kThreads / 32];
  __shared__ float redf[kThreads / 32];
  uint32_t m = 0;
#pragma unroll
  for (int p = 0; p < kPasses; ++p)
    if (p < np) m = magnitudes<T>(v[p], m);
  if constexpr (T != DType::kFP32) m = max(m & 0xffffu, m >> 16);
  m = __reduce_max_sync(0xffffffffu, m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) m = max(m, red[w]);
  const bool nan = m > kInfBits<T>;
  float amax = from_magnitude<T>(m);
  if (nan) {  // the whole block is here
    amax = 0;
#pragma unroll 1
    for (int p = 0; p < np; ++p) {
      const Row8<T> r = load8<T>(row(p));
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(value8<T>(r, i)));
    }
    for (int s = 16; s > 0; s /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, s));
    if ((threadIdx.x & 31) == 0) redf[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = redf[0];
    for (int w = 1; w < kThreads / 32; ++w) amax = fmaxf(amax, redf[w]);
  }
  const float scale = amax > 0 ? __fdiv_rn(amax, b.qmax[k]) : 1.0f;
  if (threadIdx.x == 0) j.scales[(static_cast<int64_t>(l) * nr + ir) * nc + jc] = scale;
  const DType fp8 = j.out_type;
  // Quotients are finite, NaN-free FP8 codes straight from the hardware unless the block holds
  // a NaN or an infinity or its scale is extreme: those blocks divide exactly and fix NaNs.
  if (nan || !(scale >= 0x1p-80f && scale <= 3.4028234e38f)) {
#pragma unroll 1
    for (int p = 0; p < np; ++p) {
      const Row8<T> r = load8<T>(row(p));
      float f[8];
      for (int i = 0; i < 8; ++i) f[i] = __fdiv_rn(value8<T>(r, i), scale);
      store8(o0 + p * ostep, fp8, f, false);
    }
    return;
  }
  const float inv = __frcp_rn(scale);
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    if (p >= np) continue;
    uint32_t w[2];
    for (int h = 0; h < 2; ++h) {
      float f[4];
      for (int i = 0; i < 4; ++i) f[i] = div_by_scale(value8<T>(v[p], 4 * h + i), scale, inv);
      w[h] = fp8x2_hw(f[0], f[1], fp8) | fp8x2_hw(f[2], f[3], fp8) << 16;
    }
    *reinterpret_cast<uint2*>(o0 + p * ostep) = make_uint2(w[0], w[1]);
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

bool fast_eligible(const FastJob& j, const char** why) {
  auto no = [&](const char* w) {
    if (why) *why = w;
    return false;
  };
  auto aligned = [](const void* p, uint64_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  if (!is_float_in(j.in_type)) return no("input type");
  if (!(is_float_in(j.out_type) || is_fp8(j.out_type))) return no("output type");
  if (j.nin < 1 || j.nin > kFastInputs || j.nd1 < 1 || j.nd1 > kMaxDims - 1)
    return no("inputs or dims");
  if (j.C <= 0 || j.C % 8) return no("rows not a multiple of 8 elements");
  for (int d = 0; d < j.nd1; ++d)
    if (j.ext[d] <= 0) return no("empty box");
  if (j.quant && (!is_fp8(j.out_type) || j.block_cols != kTileCols || j.block_rows < 1 ||
                  j.block_rows > kTileRows || !j.scales))
    return no("quantization blocks other than up to 128 x 128");
  if (!aligned(j.out, 8 * core::dtype_size(j.out_type))) return no("output alignment");
  for (int i = 0; i < j.nin; ++i) {
    const FastInput& in = j.in[i];
    if (!aligned(in.src, 16) || in.base % 8) return no("input alignment");
    for (int d = 0; d < j.nd1; ++d)
      if (in.stride[d] % 8 || in.lo[d] < 0 || in.hi[d] > j.ext[d] || in.lo[d] >= in.hi[d])
        return no("input rows");
  }
  return true;
}

template <DType T, bool Quant>
Status launch_fast(const FastBatch& b) {
  const int64_t blocks = b.first[b.n];
  if (blocks > 0x7fffffff) return invalid("convert_fast: {} tiles is too many", blocks);
  fast_kernel<T, Quant><<<static_cast<unsigned>(blocks), kThreads>>>(b);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    return cuda_err("fast_kernel launch", e);
  return Status::ok();
}

Status convert_fast(const FastJob* jobs, int n) {
  // One kernel for each input dtype, casts apart from quantizations (each kernel lean).
  for (DType t : {DType::kBF16, DType::kFP16, DType::kFP32})
    for (bool quant : {false, true}) {
      FastBatch b{};
      auto launch = [&]() -> Status {
        if (b.n == 0) return Status::ok();
        Status s = Status::ok();
        if (t == DType::kBF16)
          s = quant ? launch_fast<DType::kBF16, true>(b) : launch_fast<DType::kBF16, false>(b);
        else if (t == DType::kFP16)
          s = quant ? launch_fast<DType::kFP16, true>(b) : launch_fast<DType::kFP16, false>(b);
        else
          s = quant ? launch_fast<DType::kFP32, true>(b) : launch_fast<DType::kFP32, false>(b);
        b = FastBatch{};
        return s;
      };
      for (int i = 0; i < n; ++i) {
        const FastJob& j = jobs[i];
        if (j.in_type != t || j.quant != quant) continue;
        if (const char* why = nullptr; !fast_eligible(j, &why))
          return invalid("convert_fast: job {} cannot run on the fast path ({})", i, why);
        int64_t lead = 1;
        for (int d = 0; d + 1 < j.nd1; ++d) lead *= j.ext[d];
        const int64_t TR = j.quant ? j.block_rows : kTileRows;
        const int64_t tiles =
            lead * ((j.ext[j.nd1 - 1] + TR - 1) / TR) * ((j.C + kTileCols - 1) / kTileCols);
        b.job[b.n] = j;
        b.qmax[b.n] = j.quant ? core::quant_max(j.out_type) : 0.0f;
        b.first[b.n + 1] = b.first[b.n] + tiles;
        if (++b.n == kFastBatch)
          if (Status s = launch(); !s) return s;
      }
      if (Status s = launch(); !s) return s;
    }
  return Status::ok();
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
  // As rows of up to 128 elements, on the fast path when they are whole multiples of 8.
  kernels::FastJob f;
  f.C = 128;
  while (f.C > 8 && n % static_cast<uint64_t>(f.C)) f.C /= 2;
  f.nin = f.nd1 = 1;
  f.in_type = src_type;
  f.out_type = dst_type;
  f.ext[0] = static_cast<int64_t>(n) / f.C;
  f.in[0] = {src, 0, {0}, {f.ext[0]}, {f.C}};
  f.out = dst;
  if (n % 8 == 0 && kernels::fast_eligible(f)) {
    if (Status s = kernels::convert_fast(&f, 1); !s) return s;
    return finish("fast_kernel", wait);
  }
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
  kernels::FastJob f;
  f.nin = 1;
  f.nd1 = 2;
  f.in_type = src_type;
  f.out_type = fp8;
  f.ext[0] = lead;
  f.ext[1] = R;
  f.C = C;
  f.in[0] = {src, 0, {0, 0}, {lead, R}, {R * C, C}};
  f.out = out;
  f.quant = true;
  f.block_rows = block_rows;
  f.block_cols = block_cols;
  f.scales = scales;
  if (kernels::fast_eligible(f)) {
    if (Status s = kernels::convert_fast(&f, 1); !s) return s;
    return finish("fast_kernel", wait);
  }
  quant_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(
      src, src_type, R, C, block_rows, block_cols, sr, sc, fp8, core::quant_max(fp8),
      static_cast<uint8_t*>(out), scales);
  return finish("quant_kernel launch", wait);
}

}  // namespace weightcast::exec
