// Local boxes under DTensor placements and the part layout of fused inference buffers.
#include "weightcast/spec/layout.h"

#include <algorithm>

namespace weightcast::spec {

namespace {
const Placement kReplicate{};
}

std::optional<core::Box> local_box(const core::Shape& shape, const PlacementMap& placement,
                                   const Mesh& mesh, int64_t rank) {
  core::Box b = core::Box::full(shape);
  if (placement.empty()) return b;
  // Strided shards (FSDP2 over TP) split what the other axes' shards left, so they come last.
  for (size_t i = 0; i < 2 * mesh.axes.size(); ++i) {
    const size_t a = i % mesh.axes.size();
    auto it = placement.find(mesh.axes[a].name);
    const Placement& p = it == placement.end() ? kReplicate : it->second;
    if (p.kind == Placement::Kind::kReplicate) continue;
    if ((p.split_factor != 0) != (i >= mesh.axes.size())) continue;
    const int64_t c = mesh.coord(rank, static_cast<int>(a));
    if (p.kind == Placement::Kind::kOwner) {
      if (c != p.arg) return std::nullopt;
      continue;
    }
    const int d = static_cast<int>(p.arg);
    if (p.kind == Placement::Kind::kEven) {
      // Every E axis of dim d at once, at the first of them: flattened in mesh order.
      bool first = true;
      int64_t k = 1, c_all = 0;
      for (size_t e = 0; e < mesh.axes.size(); ++e) {
        auto ie = placement.find(mesh.axes[e].name);
        if (ie == placement.end() || ie->second.kind != Placement::Kind::kEven ||
            ie->second.arg != p.arg)
          continue;
        first = first && e >= a;
        c_all = c_all * mesh.axes[e].size + mesh.coord(rank, static_cast<int>(e));
        k *= mesh.axes[e].size;
      }
      if (!first) continue;
      const int64_t n = b.hi[d] - b.lo[d], base = n / k, rem = n % k;
      const int64_t lo = c_all * base + std::min(c_all, rem);
      b.hi[d] = b.lo[d] + lo + base + (c_all < rem ? 1 : 0);
      b.lo[d] += lo;
      continue;
    }
    if (p.kind == Placement::Kind::kHeads) {
      // Whole heads (the parser checks that they divide evenly); fewer heads than ranks:
      // each head is held by k/n consecutive ranks.
      const int64_t n = (b.hi[d] - b.lo[d]) / p.unit, k = mesh.axes[a].size;
      // Less than one head left by the other axes' shards: nothing (never past what they left).
      const core::Range r = n == 0   ? core::Range{0, 0}
                            : n >= k ? core::chunk_range(n, k, c)
                                     : core::Range{c * n / k, c * n / k + 1};
      b.hi[d] = b.lo[d] + r.hi * p.unit;
      b.lo[d] += r.lo * p.unit;
      continue;
    }
    const core::Range r = core::chunk_range(b.hi[d] - b.lo[d], mesh.axes[a].size, c);
    b.hi[d] = b.lo[d] + r.hi;
    b.lo[d] += r.lo;
  }
  return b;
}

std::optional<DestLocal> dest_local(const DestParam& p, const Mesh& mesh, int64_t rank) {
  DestLocal out;
  if (!p.pad_dims.empty()) {
    // One part (the parser checks): the rank's box of the padded tensor, of which the part
    // covers what lies inside the source; the rest is padding (possibly all of it).
    auto b = local_box(p.shape, p.placement, mesh, rank);
    if (!b || b->empty()) return std::nullopt;
    out.shape = b->extents();
    core::Box in = *b;
    for (int d = 0; d < in.nd; ++d) in.hi[d] = std::min(in.hi[d], p.parts[0].shape[d]);
    for (int d = 0; d < in.nd; ++d) in.lo[d] = std::min(in.lo[d], in.hi[d]);
    out.parts.push_back({0, in, 0});
    return out;
  }
  if (p.concat_whole) {
    // The rank's box of the whole concatenation; each part covers its span of it, or nothing.
    auto b = local_box(p.shape, p.placement, mesh, rank);
    if (!b || b->empty()) return std::nullopt;
    out.shape = b->extents();
    const int cd = p.concat_dim;
    int64_t start = 0;
    for (size_t i = 0; i < p.parts.size(); ++i) {
      const int64_t end = start + p.parts[i].shape[cd];
      const int64_t lo = std::max(b->lo[cd], start), hi = std::min(b->hi[cd], end);
      core::Box g = *b;
      g.lo[cd] = lo < hi ? lo - start : 0;
      g.hi[cd] = lo < hi ? hi - start : 0;
      out.parts.push_back({static_cast<int>(i), g, lo < hi ? lo - b->lo[cd] : 0});
      start = end;
    }
    return out;
  }
  int64_t offset = 0;
  for (size_t i = 0; i < p.parts.size(); ++i) {
    auto b = local_box(p.parts[i].shape, p.placement, mesh, rank);
    if (!b) return std::nullopt;
    if (i == 0)
      out.shape = b->extents();
    else
      out.shape[p.concat_dim] += b->extent(p.concat_dim);
    out.parts.push_back({static_cast<int>(i), *b, offset});
    offset += b->extent(p.concat_dim);
  }
  if (out.shape.numel() == 0) return std::nullopt;
  return out;
}

bool holds(const LocalPart& lp, const std::array<int64_t, core::kMaxDims>& idx) {
  for (int d = 0; d < lp.global.nd; ++d)
    if (idx[d] >= lp.global.extent(d)) return false;
  return true;
}

core::Shape view_shape(const DestParam& p, const core::Shape& local, bool scales) {
  if (p.view_items <= 0 || local.nd >= core::kMaxDims) return local;
  // Rows per item of the whole tensor (or of its scales), then how many items this rank holds:
  // all of them when each part was sharded on its own, its share of whole items otherwise.
  const int64_t rows =
      scales && p.quant ? (p.shape[0] + p.quant->block_rows - 1) / p.quant->block_rows : p.shape[0];
  const int64_t items = p.concat_whole ? local[0] / (rows / p.view_items) : p.view_items;
  if (items <= 0 || local[0] % items) return local;
  core::Shape v;
  v.nd = local.nd + 1;
  v.d[0] = items;
  v.d[1] = local[0] / items;
  for (int k = 1; k < local.nd; ++k) v.d[k + 1] = local[k];
  return v;
}

core::Shape scale_shape(const core::Shape& local, const Quant& q) {
  core::Shape s = local;
  s[s.nd - 2] = (s[s.nd - 2] + q.block_rows - 1) / q.block_rows;
  s[s.nd - 1] = (s[s.nd - 1] + q.block_cols - 1) / q.block_cols;
  return s;
}

}  // namespace weightcast::spec
