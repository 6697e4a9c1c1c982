// CPU projection: per-element assembly in float, then a cast or DeepSeek-style block
// quantization (scale = absmax / dtype max, 1.0 for an all-zero block; q = x / scale, saturating).
#include "weightcast/plan/project.h"

#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "weightcast/spec/layout.h"

namespace weightcast::plan {

using core::Box;
using core::Shape;

Status project_cpu(const spec::Inputs& in, const Plan& plan, const Project& pr,
                   const InputResolver& resolve, std::byte* staging, uint64_t staging_size) {
  const DestTensor& dt = plan.dests[pr.dest];
  const spec::DestParam& dp = in.inference.params[dt.param];
  const Receiver& rv = plan.receivers[dt.receiver];
  const auto local = spec::dest_local(dp, in.inference.replicas[rv.replica], rv.rank);
  if (!local) return Status(Code::kInternal, "projection for a rank that holds nothing");
  const Shape bs = pr.box.extents();
  std::vector<float> x(static_cast<size_t>(bs.numel()));
  std::vector<uint8_t> hit(x.size(), 0);
  for (const auto& inp : pr.inputs) {
    if (inp.part >= dp.parts.size())
      return invalid("projection input names part {} of '{}'", inp.part, dp.name);
    const spec::Part& part = dp.parts[inp.part];
    const spec::Param& sp = in.trainer.params[part.src];
    const size_t esz = core::dtype_size(sp.dtype);
    const Held h = resolve(inp);
    if (!h.data || !h.box.contains(inp.src))
      return invalid("projection of '{}': source {} of '{}' is not held here (holds {})", dp.name,
                     inp.src.str(), sp.name, h.box.str());
    const Shape hs = h.box.extents();
    const int nd = inp.src.nd;
    const auto& lp = local->parts[inp.part];
    // Row by row along the innermost source dim: one index computation per row, then a strided
    // inner loop (stride 1, or a row of the box when the part is transposed).
    const int64_t row = inp.src.extent(nd - 1);
    const int64_t dstride = part.transpose && nd >= 2 ? bs[nd - 1] : 1;
    std::array<int64_t, core::kMaxDims> i{};
    for (int k = 0; k < nd; ++k) i[k] = inp.src.lo[k];
    const int64_t rows = row > 0 ? inp.src.numel() / row : 0;
    for (int64_t n = 0; n < rows; ++n) {
      int64_t off = 0;
      for (int k = 0; k < nd; ++k) off = off * hs[k] + (i[k] - h.box.lo[k]);
      std::array<int64_t, core::kMaxDims> d = i;  // part-global -> dest-local -> box-relative
      if (part.transpose) std::swap(d[nd - 1], d[nd - 2]);
      int64_t boff = 0;
      for (int k = 0; k < nd; ++k) {
        const int64_t v =
            d[k] - lp.global.lo[k] + (k == dp.concat_dim ? lp.offset : 0) - pr.box.lo[k];
        const int64_t last = v + ((part.transpose ? k == nd - 2 : k == nd - 1) ? row - 1 : 0);
        if (v < 0 || last >= bs[k])
          return invalid("projection input {} maps outside its box {}", inp.src.str(),
                         pr.box.str());
        boff = boff * bs[k] + v;
      }
      const std::byte* src = h.data + off * esz;
      if (sp.dtype == core::DType::kBF16) {  // the common case, without a per-element switch
        for (int64_t j = 0; j < row; ++j) {
          uint16_t v;
          std::memcpy(&v, src + j * 2, 2);
          x[static_cast<size_t>(boff + j * dstride)] = std::bit_cast<float>(uint32_t{v} << 16);
          ++hit[static_cast<size_t>(boff + j * dstride)];
        }
      } else {
        for (int64_t j = 0; j < row; ++j) {
          x[static_cast<size_t>(boff + j * dstride)] = core::load_as_float(sp.dtype, src + j * esz);
          ++hit[static_cast<size_t>(boff + j * dstride)];
        }
      }
      for (int k = nd - 2; k >= 0; --k) {
        if (++i[k] < inp.src.hi[k]) break;
        i[k] = inp.src.lo[k];
      }
    }
  }
  for (size_t e = 0; e < hit.size(); ++e)
    if (hit[e] != 1)
      return invalid("projection box {}: element {} assembled {} times", pr.box.str(), e, hit[e]);
  const size_t esz = core::dtype_size(dt.dtype);
  if (pr.staging_off + x.size() * esz > staging_size)
    return invalid("projection runs past staging");
  std::byte* out = staging + pr.staging_off;
  if (pr.kind != Project::Kind::kQuant) {
    for (size_t e = 0; e < x.size(); ++e) core::store_from_float(dt.dtype, x[e], out + e * esz);
    return Status::ok();
  }
  const spec::Quant& q = *dp.quant;
  const int nd = bs.nd;
  const int64_t R = bs[nd - 2], C = bs[nd - 1], lead = bs.numel() / (R * C);
  if (pr.box.lo[nd - 2] % q.block_rows || C != dt.shape[nd - 1])
    return invalid("quantized box {} is not whole blocks of whole rows", pr.box.str());
  const int64_t sr = pr.scale_box.extent(nd - 2), sc = pr.scale_box.extent(nd - 1);
  if (pr.scale_off + static_cast<uint64_t>(lead * sr * sc) * 4 > staging_size)
    return invalid("scales run past staging");
  if (sr != (R + q.block_rows - 1) / q.block_rows || sc != (C + q.block_cols - 1) / q.block_cols)
    return invalid("scale box {} does not match box {}", pr.scale_box.str(), pr.box.str());
  quantize_blocks_cpu(x.data(), lead, R, C, q.block_rows, q.block_cols, dt.dtype, out,
                      staging + pr.scale_off);
  return Status::ok();
}

namespace {

// core::float_to_fp8e4m3 / e5m2, inlined for the quantization loop: the same integer rounding and
// the same bytes (plan_test compares them), written without branches so that the compiler can
// encode several elements per instruction: both the normal and the subnormal code are computed,
// then selected. The subnormal one (multiples of 2^(1 - bias - mbits)) is rounded to nearest even
// by adding 1.5 * 2^23, which is what nearbyint does in the default rounding mode.
template <int kMbits, int kBias, uint32_t kTop>
inline uint8_t fp8_fast(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 24) & 0x80;
  const uint32_t mag = u & 0x7fffffff;
  const int32_t e = static_cast<int32_t>(mag >> 23) - 127;
  constexpr int kShift = 23 - kMbits;
  const uint32_t m = mag & 0x7fffff;
  const uint32_t r = (m + ((1u << (kShift - 1)) - 1) + ((m >> kShift) & 1)) >> kShift;
  const uint32_t normal = (static_cast<uint32_t>(e + kBias) << kMbits) + r;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const float scaled = std::bit_cast<float>(mag < 0x7f800000 ? mag : 0u) *
                       static_cast<float>(1 << (kMbits + kBias - 1));
  const uint32_t sub = std::bit_cast<uint32_t>(scaled + kMagic) - std::bit_cast<uint32_t>(kMagic);
  uint32_t code = e < 1 - kBias ? sub : normal;  // infinity: `normal` saturates below
  code = code > kTop ? kTop : code;
  return static_cast<uint8_t>(mag > 0x7f800000 ? 0x7fu : (sign | code));  // NaN: 0x7f
}

// The same encoder on kLanes floats at a time, written with GCC's vector extensions; each build
// below (one per instruction set) picks kLanes to fill one of its registers (AVX-512: 16, AVX2: 8,
// the x86-64 baseline: 4; wider generic vectors are split badly). Every operation is the scalar
// one lane by lane, so the bytes are fp8_fast's; the division is the IEEE one, not a reciprocal.
template <int kLanes>
struct Lanes {
  typedef float VF __attribute__((vector_size(4 * kLanes)));
  typedef uint32_t VU __attribute__((vector_size(4 * kLanes)));
  typedef int32_t VI __attribute__((vector_size(4 * kLanes)));
  typedef uint8_t VB __attribute__((vector_size(kLanes)));
};

// Encodes in[0..kLanes) / s into o (pointers, not vectors, cross the call: no vector ABI).
template <int kLanes, int kMbits, int kBias, uint32_t kTop>
[[gnu::always_inline]] inline void fp8_lanes(const float* in, float s, uint8_t* o) {
  using VF = typename Lanes<kLanes>::VF;
  using VU = typename Lanes<kLanes>::VU;
  using VI = typename Lanes<kLanes>::VI;
  using VB = typename Lanes<kLanes>::VB;
  VF f;
  std::memcpy(&f, in, sizeof f);
  f = f / s;
  const VU u = (VU)(f);
  const VU zero = {};
  const VU sign = (u >> 24) & 0x80;
  const VU mag = u & 0x7fffffff;
  const VI e = (VI)(mag) >> 23;  // biased: mag's top bit is clear
  constexpr int kShift = 23 - kMbits;
  const VU m = mag & 0x7fffff;
  const VU r = (m + ((1u << (kShift - 1)) - 1) + ((m >> kShift) & 1)) >> kShift;
  const VU normal = ((VU)(e) + (kBias - 127)) * (1u << kMbits) + r;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const VU finite = mag < 0x7f800000 ? mag : zero;
  const VF scaled = (VF)(finite) * static_cast<float>(1 << (kMbits + kBias - 1)) + kMagic;
  const VU sub = (VU)(scaled)-std::bit_cast<uint32_t>(kMagic);
  VU code = e < 128 - kBias ? sub : normal;  // e - 127 < 1 - kBias
  code = code > kTop ? zero + kTop : code;
  const VU out = mag > 0x7f800000 ? zero + 0x7fu : (sign | code);
  const VB b = __builtin_convertvector(out, VB);
  std::memcpy(o, &b, sizeof b);
}

template <int kLanes, int kMbits, int kBias, uint32_t kTop>
[[gnu::always_inline]] inline void quantize_blocks(const float* x, int64_t lead, int64_t R,
                                                   int64_t C, int64_t block_rows,
                                                   int64_t block_cols, float qmax, std::byte* out,
                                                   std::byte* scales) {
  const int64_t sr = (R + block_rows - 1) / block_rows, sc = (C + block_cols - 1) / block_cols;
  // Per block column of a band: the lanes' maxima and the tail's (the columns past the block's
  // last whole group of kLanes).
  // (Plain words, loaded and stored by memcpy: a std::vector of vectors may not be aligned.)
  std::vector<uint32_t> vmax(static_cast<size_t>(sc * kLanes));
  std::vector<uint32_t> amax(static_cast<size_t>(sc));
  std::vector<float> scale(static_cast<size_t>(sc));
  using VU = typename Lanes<kLanes>::VU;
  const VU zero = {};
  for (int64_t l = 0; l < lead; ++l)
    for (int64_t br = 0; br < sr; ++br) {
      const int64_t r0 = br * block_rows, r1 = std::min(R, r0 + block_rows);
      // Absmax of every block of this band of rows in one pass over it, on the bit patterns: for
      // magnitudes their order is the floats' order, and a NaN counts as 0, as std::fmax ignores
      // it.
      std::fill(vmax.begin(), vmax.end(), 0u);
      std::fill(amax.begin(), amax.end(), 0u);
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = x + (l * R + r) * C;
        for (int64_t bc = 0; bc < sc; ++bc) {
          const int64_t c0 = bc * block_cols, c1 = std::min(C, c0 + block_cols);
          int64_t c = c0;
          VU va;
          std::memcpy(&va, vmax.data() + bc * kLanes, sizeof va);
          for (; c + kLanes <= c1; c += kLanes) {
            VU v;
            std::memcpy(&v, row + c, sizeof v);
            v &= 0x7fffffff;
            v = v > 0x7f800000 ? zero : v;
            va = v > va ? v : va;
          }
          std::memcpy(vmax.data() + bc * kLanes, &va, sizeof va);
          uint32_t a = amax[static_cast<size_t>(bc)];
          for (; c < c1; ++c) {
            uint32_t m = std::bit_cast<uint32_t>(row[c]) & 0x7fffffff;
            m = m > 0x7f800000 ? 0 : m;
            a = m > a ? m : a;
          }
          amax[static_cast<size_t>(bc)] = a;
        }
      }
      for (int64_t bc = 0; bc < sc; ++bc) {
        uint32_t a = amax[static_cast<size_t>(bc)];
        for (int k = 0; k < kLanes; ++k)
          a = std::max(a, vmax[static_cast<size_t>(bc * kLanes + k)]);
        const float f = std::bit_cast<float>(a);
        scale[static_cast<size_t>(bc)] = f > 0 ? f / qmax : 1.0f;
        std::memcpy(scales + ((l * sr + br) * sc + bc) * 4, &scale[static_cast<size_t>(bc)], 4);
      }
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = x + (l * R + r) * C;
        auto* o = reinterpret_cast<uint8_t*>(out + (l * R + r) * C);
        for (int64_t bc = 0; bc < sc; ++bc) {
          const float s = scale[static_cast<size_t>(bc)];
          const int64_t c0 = bc * block_cols, c1 = std::min(C, c0 + block_cols);
          int64_t c = c0;
          for (; c + kLanes <= c1; c += kLanes)
            fp8_lanes<kLanes, kMbits, kBias, kTop>(row + c, s, o + c);
          for (; c < c1; ++c) o[c] = fp8_fast<kMbits, kBias, kTop>(row[c] / s);
        }
      }
    }
}

}  // namespace

namespace {

// The FP8 formats through the lanes above; anything else element by element through core.
template <int kLanes>
[[gnu::always_inline]] inline void quantize_any(const float* x, int64_t lead, int64_t R, int64_t C,
                                                int64_t block_rows, int64_t block_cols,
                                                core::DType fp8, std::byte* out,
                                                std::byte* scales) {
  const float qmax = core::quant_max(fp8);
  if (fp8 == core::DType::kFP8E4M3)
    return quantize_blocks<kLanes, 3, 7, 0x7e>(x, lead, R, C, block_rows, block_cols, qmax, out,
                                               scales);
  if (fp8 == core::DType::kFP8E5M2)
    return quantize_blocks<kLanes, 2, 15, 0x7b>(x, lead, R, C, block_rows, block_cols, qmax, out,
                                                scales);
  const int64_t sr = (R + block_rows - 1) / block_rows, sc = (C + block_cols - 1) / block_cols;
  for (int64_t l = 0; l < lead; ++l)
    for (int64_t br = 0; br < sr; ++br)
      for (int64_t bc = 0; bc < sc; ++bc) {
        const int64_t r0 = br * block_rows, r1 = std::min(R, r0 + block_rows);
        const int64_t c0 = bc * block_cols, c1 = std::min(C, c0 + block_cols);
        float amax = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c)
            amax = std::fmax(amax, std::fabs(x[(l * R + r) * C + c]));
        const float scale = amax > 0 ? amax / qmax : 1.0f;
        std::memcpy(scales + ((l * sr + br) * sc + bc) * 4, &scale, 4);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c)
            core::store_from_float(fp8, x[(l * R + r) * C + c] / scale,
                                   out + ((l * R + r) * C + c));
      }
}

#if defined(__x86_64__)
// One build per instruction set, its lanes one register wide. (Explicit
// builds rather than target_clones, so that tests can run each one this CPU can.)
[[gnu::target("avx512f")]] void quantize_avx512(const float* x, int64_t lead, int64_t R, int64_t C,
                                                int64_t br, int64_t bc, core::DType fp8,
                                                std::byte* out, std::byte* scales) {
  quantize_any<16>(x, lead, R, C, br, bc, fp8, out, scales);
}
[[gnu::target("avx2")]] void quantize_avx2(const float* x, int64_t lead, int64_t R, int64_t C,
                                           int64_t br, int64_t bc, core::DType fp8, std::byte* out,
                                           std::byte* scales) {
  quantize_any<8>(x, lead, R, C, br, bc, fp8, out, scales);
}
#endif
void quantize_baseline(const float* x, int64_t lead, int64_t R, int64_t C, int64_t br, int64_t bc,
                       core::DType fp8, std::byte* out, std::byte* scales) {
  quantize_any<4>(x, lead, R, C, br, bc, fp8, out, scales);
}

}  // namespace

bool cpu_has(CpuIsa isa) {
#if !defined(__x86_64__)
  return isa == CpuIsa::kBaseline;
#else
  switch (isa) {
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f");
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2");
    case CpuIsa::kBaseline:
      return true;
  }
  return false;
#endif
}

void quantize_blocks_cpu(const float* x, int64_t lead, int64_t R, int64_t C, int64_t block_rows,
                         int64_t block_cols, core::DType fp8, std::byte* out, std::byte* scales) {
  static const CpuIsa best = cpu_has(CpuIsa::kAvx512) ? CpuIsa::kAvx512
                             : cpu_has(CpuIsa::kAvx2) ? CpuIsa::kAvx2
                                                      : CpuIsa::kBaseline;
  quantize_blocks_cpu_on(best, x, lead, R, C, block_rows, block_cols, fp8, out, scales);
}

void quantize_blocks_cpu_on(CpuIsa isa, const float* x, int64_t lead, int64_t R, int64_t C,
                            int64_t block_rows, int64_t block_cols, core::DType fp8, std::byte* out,
                            std::byte* scales) {
  if (!cpu_has(isa)) isa = CpuIsa::kBaseline;
#if defined(__x86_64__)
  switch (isa) {
    case CpuIsa::kAvx512:
      return quantize_avx512(x, lead, R, C, block_rows, block_cols, fp8, out, scales);
    case CpuIsa::kAvx2:
      return quantize_avx2(x, lead, R, C, block_rows, block_cols, fp8, out, scales);
    case CpuIsa::kBaseline:
      break;
  }
#endif
  quantize_baseline(x, lead, R, C, block_rows, block_cols, fp8, out, scales);
}

}  // namespace weightcast::plan
