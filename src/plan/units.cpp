// Unit cutting. Plain copies and casts take each intersection of a part with a trainer shard as a
// unit. Block quantization needs whole blocks of whole rows (the scale of a block is its absmax),
// so its units are cells between block-rounded shard boundaries; a cell whose data no single
// rank holds becomes a gather later.
#include <algorithm>
#include <map>
#include <set>

#include "units.h"

namespace weightcast::plan::detail {

using core::Box;
using core::Shape;

Box to_dest(const Box& part_box, const spec::LocalPart& lp, int cd) {
  Box b = core::relative(part_box, lp.global);
  b.lo[cd] += lp.offset;
  b.hi[cd] += lp.offset;
  return b;
}

Box to_part(const Box& dest_box, const spec::LocalPart& lp, int cd) {
  Box b = dest_box;
  b.lo[cd] -= lp.offset;
  b.hi[cd] -= lp.offset;
  return core::absolute(b, lp.global);
}

Box part_region(const Shape& local, const spec::LocalPart& lp, int cd) {
  Box r = Box::full(local);
  r.lo[cd] = lp.offset;
  r.hi[cd] = lp.offset + lp.global.extent(cd);
  return r;
}

namespace {

std::vector<Holders> holders_of(const spec::Param& p, const spec::Mesh& mesh) {
  std::vector<Holders> out;
  std::map<std::pair<std::array<int64_t, core::kMaxDims>, std::array<int64_t, core::kMaxDims>>,
           size_t>
      seen;
  for (int64_t r = 0; r < mesh.size(); ++r) {
    auto b = spec::local_box(p.shape, p.placement, mesh, r);
    if (!b || b->empty()) continue;
    auto [it, fresh] = seen.emplace(std::make_pair(b->lo, b->hi), out.size());
    if (fresh) out.push_back({*b, {}});
    out[it->second].ranks.push_back(static_cast<uint32_t>(r));
  }
  return out;
}

// Splits `b` into boxes of at most `limit` bytes, cutting the outermost dim that can be cut.
// Dim `align_dim` is only cut at multiples of `align`; dims >= `keep_from` are never cut.
void split(const Box& b, uint64_t elem, uint64_t limit, int align_dim, int64_t align, int keep_from,
           std::vector<Box>& out) {
  if (static_cast<uint64_t>(b.numel()) * elem <= limit) {
    out.push_back(b);
    return;
  }
  for (int d = 0; d < std::min(b.nd, keep_from); ++d) {
    const int64_t step = d == align_dim ? align : 1;
    if (b.extent(d) <= step) continue;
    Box one = b;
    one.hi[d] = one.lo[d] + 1;
    const uint64_t per = static_cast<uint64_t>(one.numel()) * elem;
    int64_t n = static_cast<int64_t>(std::max<uint64_t>(1, limit / std::max<uint64_t>(1, per)));
    n = std::max(step, n / step * step);
    for (int64_t lo = b.lo[d]; lo < b.hi[d]; lo += n) {
      Box c = b;
      c.lo[d] = lo;
      c.hi[d] = std::min(b.hi[d], lo + n);
      split(c, elem, limit, align_dim, align, keep_from, out);
    }
    return;
  }
  out.push_back(b);  // cannot be cut further (one row of a huge tensor): writes split it
}

struct Piece {
  uint32_t part;
  uint32_t holders;
  Box dest;  // dest-local coords
  Box src;   // trainer-global coords
};

}  // namespace

Layout cut_units(const spec::Inputs& in, const Options& opts, Plan& plan) {
  Layout L;
  const auto& tparams = in.trainer.params;
  L.holders.resize(tparams.size());
  std::vector<bool> used(tparams.size());
  for (const auto& d : in.inference.params)
    for (const auto& p : d.parts) used[p.src] = true;
  for (size_t i = 0; i < tparams.size(); ++i)
    if (used[i]) L.holders[i] = holders_of(tparams[i], in.trainer.mesh);

  for (uint32_t rep = 0; rep < in.inference.replicas.size(); ++rep) {
    const spec::Mesh& mesh = in.inference.replicas[rep];
    for (int64_t rank = 0; rank < mesh.size(); ++rank) {
      const auto recv = static_cast<uint32_t>(plan.receivers.size());
      Receiver rv;
      rv.replica = rep;
      rv.rank = static_cast<uint32_t>(rank);
      rv.host = mesh.devices[rank].host;
      rv.gpu = mesh.devices[rank].gpu;
      const spec::HostInfo* h = in.topology.find(rv.host);
      rv.nics = h->nics_per_gpu;
      rv.nic_gbps = h->nic_gbps;
      plan.receivers.push_back(rv);
      for (size_t pi = 0; pi < in.inference.params.size(); ++pi) {
        const spec::DestParam& dp = in.inference.params[pi];
        auto local = spec::dest_local(dp, mesh, rank);
        if (!local) continue;
        const auto dest = static_cast<uint32_t>(plan.dests.size());
        const uint64_t esz = core::dtype_size(dp.dtype);
        plan.dests.push_back({recv, static_cast<int32_t>(pi), false, local->shape, dp.dtype,
                              static_cast<uint64_t>(local->shape.numel()) * esz});
        L.dest_parts.push_back(local->parts);
        int32_t scale_dest = -1;
        if (dp.quant) {
          scale_dest = static_cast<int32_t>(plan.dests.size());
          const Shape ss = spec::scale_shape(local->shape, *dp.quant);
          plan.dests.push_back({recv, static_cast<int32_t>(pi), true, ss, core::DType::kFP32,
                                static_cast<uint64_t>(ss.numel()) * 4});
          L.dest_parts.emplace_back();
        }
        // Every intersection of a part with a trainer shard, in dest-local coords.
        std::vector<Piece> pieces;
        for (const spec::LocalPart& lp : local->parts) {
          if (lp.global.empty()) continue;
          const spec::Part& part = dp.parts[lp.part];
          const Box src_need = part.transpose ? core::transpose_last2(lp.global) : lp.global;
          const auto& hs = L.holders[part.src];
          for (uint32_t hi = 0; hi < hs.size(); ++hi) {
            auto x = core::intersect(src_need, hs[hi].box);
            if (!x) continue;
            const Box pb = part.transpose ? core::transpose_last2(*x) : *x;
            pieces.push_back({static_cast<uint32_t>(lp.part), hi, to_dest(pb, lp, dp.concat_dim), *x});
          }
        }
        const Shape& ls = local->shape;
        if (!dp.quant) {
          const bool cast = dp.dtype != tparams[dp.parts[0].src].dtype;
          for (const Piece& p : pieces) {
            std::vector<Box> boxes;
            split(p.dest, esz, opts.max_write_bytes, -1, 1, ls.nd, boxes);
            for (const Box& b : boxes) {
              const Box pb = to_part(b, local->parts[p.part], dp.concat_dim);
              const Box sb = dp.parts[p.part].transpose ? core::transpose_last2(pb) : pb;
              Unit u{dest, -1, b, {}, {{p.part, sb, p.holders}},
                     static_cast<uint64_t>(b.numel()) * esz,
                     cast ? Project::Kind::kCast : Project::Kind::kCopy};
              L.units.push_back(std::move(u));
            }
          }
          continue;
        }
        // Block quantization: cells between shard boundaries, rows rounded out to whole blocks.
        const spec::Quant& q = *dp.quant;
        const int rd = ls.nd - 2;
        std::vector<std::vector<int64_t>> cuts(ls.nd - 1);
        for (int d = 0; d < ls.nd - 1; ++d) {
          std::set<int64_t> c{0, ls[d]};
          for (const Piece& p : pieces) {
            if (d == rd) {
              c.insert(p.dest.lo[d] / q.block_rows * q.block_rows);
              c.insert(std::min(ls[d], (p.dest.hi[d] + q.block_rows - 1) / q.block_rows * q.block_rows));
            } else {
              c.insert(p.dest.lo[d]);
              c.insert(p.dest.hi[d]);
            }
          }
          cuts[d].assign(c.begin(), c.end());
        }
        std::vector<size_t> idx(ls.nd - 1, 0);
        while (true) {
          Box cell = Box::full(ls);
          for (int d = 0; d < ls.nd - 1; ++d) {
            cell.lo[d] = cuts[d][idx[d]];
            cell.hi[d] = cuts[d][idx[d] + 1];
          }
          std::vector<Box> boxes;
          split(cell, esz, opts.max_write_bytes, rd, q.block_rows, ls.nd - 1, boxes);
          for (const Box& b : boxes) {
            Unit u;
            u.dest = dest;
            u.scale_dest = scale_dest;
            u.box = b;
            u.kind = Project::Kind::kQuant;
            u.scale_box = b;
            u.scale_box.lo[rd] = b.lo[rd] / q.block_rows;
            u.scale_box.hi[rd] = (b.hi[rd] + q.block_rows - 1) / q.block_rows;
            u.scale_box.lo[rd + 1] = 0;
            u.scale_box.hi[rd + 1] = plan.dests[scale_dest].shape[rd + 1];
            u.bytes = static_cast<uint64_t>(b.numel()) * esz + u.scale_box.numel() * 4;
            for (const Piece& p : pieces) {
              auto x = core::intersect(b, p.dest);
              if (!x) continue;
              const Box pb = to_part(*x, local->parts[p.part], dp.concat_dim);
              u.needs.push_back({p.part, dp.parts[p.part].transpose ? core::transpose_last2(pb) : pb,
                                 p.holders});
            }
            L.units.push_back(std::move(u));
          }
          int d = ls.nd - 2;
          for (; d >= 0; --d) {
            if (++idx[d] + 1 < cuts[d].size()) break;
            idx[d] = 0;
          }
          if (d < 0) break;
        }
      }
    }
  }
  return L;
}

}  // namespace weightcast::plan::detail
