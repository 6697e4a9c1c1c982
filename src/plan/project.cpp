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

template <uint8_t (*kEncode)(float)>
[[gnu::always_inline]] inline void quantize_blocks(const float* x, int64_t lead, int64_t R,
                                                   int64_t C, int64_t block_rows,
                                                   int64_t block_cols, float qmax, std::byte* out,
                                                   std::byte* scales) {
  const int64_t sr = (R + block_rows - 1) / block_rows, sc = (C + block_cols - 1) / block_cols;
  for (int64_t l = 0; l < lead; ++l)
    for (int64_t br = 0; br < sr; ++br) {
      const int64_t r0 = br * block_rows, r1 = std::min(R, r0 + block_rows);
      // Absmax of every block of this band of rows in one pass over it, on the bit patterns: for
      // magnitudes their order is the floats' order, and a NaN counts as 0, as std::fmax ignores
      // it. Integer maxima vectorize; float ones do not without fast-math.
      std::vector<uint32_t> amax(static_cast<size_t>(sc), 0);
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = x + (l * R + r) * C;
        for (int64_t bc = 0; bc < sc; ++bc) {
          uint32_t a = amax[static_cast<size_t>(bc)];
          for (int64_t c = bc * block_cols, c1 = std::min(C, c + block_cols); c < c1; ++c) {
            uint32_t m = std::bit_cast<uint32_t>(row[c]) & 0x7fffffff;
            m = m > 0x7f800000 ? 0 : m;
            a = m > a ? m : a;
          }
          amax[static_cast<size_t>(bc)] = a;
        }
      }
      std::vector<float> scale(static_cast<size_t>(sc));
      for (int64_t bc = 0; bc < sc; ++bc) {
        const float a = std::bit_cast<float>(amax[static_cast<size_t>(bc)]);
        scale[static_cast<size_t>(bc)] = a > 0 ? a / qmax : 1.0f;
        std::memcpy(scales + ((l * sr + br) * sc + bc) * 4, &scale[static_cast<size_t>(bc)], 4);
      }
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = x + (l * R + r) * C;
        auto* o = reinterpret_cast<uint8_t*>(out + (l * R + r) * C);
        for (int64_t bc = 0; bc < sc; ++bc) {
          const float s = scale[static_cast<size_t>(bc)];
          for (int64_t c = bc * block_cols, c1 = std::min(C, c + block_cols); c < c1; ++c)
            o[c] = kEncode(row[c] / s);
        }
      }
    }
}

}  // namespace

// Compiled twice, for AVX2 and for the x86-64 baseline, and picked when the program loads: the
// loops above vectorize (their maxima need more than SSE2).
[[gnu::target_clones("avx2", "default")]] void quantize_blocks_cpu(
    const float* x, int64_t lead, int64_t R, int64_t C, int64_t block_rows, int64_t block_cols,
    core::DType fp8, std::byte* out, std::byte* scales) {
  const float qmax = core::quant_max(fp8);
  if (fp8 == core::DType::kFP8E4M3)
    return quantize_blocks<fp8_fast<3, 7, 0x7e>>(x, lead, R, C, block_rows, block_cols, qmax, out,
                                                 scales);
  if (fp8 == core::DType::kFP8E5M2)
    return quantize_blocks<fp8_fast<2, 15, 0x7b>>(x, lead, R, C, block_rows, block_cols, qmax, out,
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

}  // namespace weightcast::plan
