// The reference reshard: builds a destination buffer element by element from the full trainer
// tensors' pattern values. It uses only the spec (placements and mappings), never the plan.
#include <cmath>
#include <cstring>

#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"

namespace weightcast::plan {

namespace {
uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t pattern_seed(const std::string& param) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : param) h = (h ^ c) * 1099511628211ull;
  return h;
}

float pattern_value(uint64_t seed, int64_t index, uint64_t step) {
  static constexpr float kMag[8] = {0.125f, 0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 16.0f};
  const uint64_t r = splitmix(seed ^ (static_cast<uint64_t>(index) + (step << 48)));
  // Uniform in [-1, 1) times a magnitude that changes every 64 elements, so blocks get
  // different scales.
  const float u = static_cast<float>(r >> 40) * (1.0f / static_cast<float>(1 << 23)) - 1.0f;
  const uint64_t m = ((seed ^ static_cast<uint64_t>(index >> 6)) * 0x9e3779b97f4a7c15ull) >> 61;
  return u * kMag[m];
}

std::vector<std::byte> reference_tensor(const spec::Inputs& in, const DestTensor& d,
                                        const Receiver& r, uint64_t step, const ValueFn& values) {
  const spec::DestParam& dp = in.inference.params[d.param];
  const spec::Mesh& mesh = in.inference.replicas[r.replica];
  const auto local = spec::dest_local(dp, mesh, r.rank);
  const core::Shape& ls = local->shape;
  // Source values, rounded to the trainer dtype, at every local element.
  std::vector<float> x(static_cast<size_t>(ls.numel()));
  std::vector<uint64_t> seeds;
  for (const spec::Part& part : dp.parts)
    seeds.push_back(pattern_seed(in.trainer.params[part.src].name));
  std::array<int64_t, core::kMaxDims> idx{};
  for (size_t e = 0; e < x.size(); ++e) {
    int64_t rem = static_cast<int64_t>(e);
    for (int k = ls.nd - 1; k >= 0; --k) {
      idx[k] = rem % ls[k];
      rem /= ls[k];
    }
    // Which part: the one whose span along the concat dim contains idx[concat_dim].
    const spec::LocalPart* lp = &local->parts[0];
    for (const auto& p : local->parts)
      if (idx[dp.concat_dim] >= p.offset &&
          idx[dp.concat_dim] < p.offset + p.global.extent(dp.concat_dim))
        lp = &p;
    std::array<int64_t, core::kMaxDims> g{};
    for (int k = 0; k < ls.nd; ++k)
      g[k] = idx[k] - (k == dp.concat_dim ? lp->offset : 0) + lp->global.lo[k];
    if (!dp.pad_dims.empty() && !spec::holds(*lp, idx)) {
      x[e] = 0;  // padding: never written, the engine's zeros
      continue;
    }
    const spec::Part& part = dp.parts[lp->part];
    if (part.transpose) std::swap(g[ls.nd - 1], g[ls.nd - 2]);
    const spec::Param& src = in.trainer.params[part.src];
    int64_t flat = 0;
    for (int k = 0; k < src.shape.nd; ++k) flat = flat * src.shape[k] + g[k];
    std::byte tmp[4];
    core::store_from_float(
        src.dtype,
        values ? values(part.src, flat, step) : pattern_value(seeds[lp->part], flat, step), tmp);
    x[e] = core::load_as_float(src.dtype, tmp);
  }
  const size_t esz = core::dtype_size(dp.dtype);
  if (!dp.quant) {
    std::vector<std::byte> out(x.size() * esz);
    for (size_t e = 0; e < x.size(); ++e) core::store_from_float(dp.dtype, x[e], &out[e * esz]);
    return out;
  }
  // Block quantization, DeepSeek-V3 style: per block, scale = absmax / 448, q = x / scale.
  const spec::Quant& q = *dp.quant;
  const core::Shape ss = spec::scale_shape(ls, q);
  const int64_t R = ls[ls.nd - 2], C = ls[ls.nd - 1], lead = ls.numel() / (R * C);
  std::vector<std::byte> out(d.scale ? static_cast<size_t>(ss.numel()) * 4 : x.size() * esz);
  for (int64_t l = 0; l < lead; ++l)
    for (int64_t br = 0; br < ss[ss.nd - 2]; ++br)
      for (int64_t bc = 0; bc < ss[ss.nd - 1]; ++bc) {
        float amax = 0;
        const int64_t r1 = std::min(R, (br + 1) * q.block_rows),
                      c1 = std::min(C, (bc + 1) * q.block_cols);
        for (int64_t i = br * q.block_rows; i < r1; ++i)
          for (int64_t j = bc * q.block_cols; j < c1; ++j)
            amax = std::fmax(amax, std::fabs(x[(l * R + i) * C + j]));
        const float scale = amax > 0 ? amax / core::quant_max(dp.dtype) : 1.0f;
        if (d.scale) {
          std::memcpy(&out[((l * ss[ss.nd - 2] + br) * ss[ss.nd - 1] + bc) * 4], &scale, 4);
          continue;
        }
        for (int64_t i = br * q.block_rows; i < r1; ++i)
          for (int64_t j = bc * q.block_cols; j < c1; ++j) {
            const size_t e = static_cast<size_t>((l * R + i) * C + j);
            core::store_from_float(dp.dtype, x[e] / scale, &out[e * esz]);
          }
      }
  return out;
}

}  // namespace weightcast::plan
