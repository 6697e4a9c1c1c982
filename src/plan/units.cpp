// Unit cutting. Plain copies and casts take each intersection of a part with a trainer shard as a
// unit. Block quantization needs whole blocks of whole rows (the scale of a block is its absmax),
// so its units are cells between block-rounded shard boundaries; a cell whose data no single
// rank holds becomes a gather later.
#include "units.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

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

std::vector<uint32_t> common(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  std::vector<uint32_t> out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

// Cuts one dest tensor (one param on one receiver) into units.
struct TensorCutter {
  const spec::Inputs& in;
  const Options& opts;
  const Layout& L;
  const spec::DestParam& dp;
  const spec::DestLocal& local;
  const std::vector<Piece>& pieces;
  const std::vector<int>& domain_of;  // trainer rank -> NVLink domain id
  // The rate a gathered piece moves at, for the packing trade: the host collective sends pieces
  // over the trainers' NICs (their ipc links when the plan costs ipc links), slowest GPU's.
  double gather_gbps;
  Target base;  // dest ids; boxes filled per unit
  Shape scale_shape;

  uint64_t esz() const { return core::dtype_size(dp.dtype); }

  std::vector<Need> needs_of(const Box& b) const {
    std::vector<Need> out;
    for (const Piece& p : pieces) {
      auto x = core::intersect(b, p.dest);
      if (!x) continue;
      const Box pb = to_part(*x, local.parts[p.part], dp.concat_dim);
      out.push_back(
          {p.part, dp.parts[p.part].transpose ? core::transpose_last2(pb) : pb, p.holders});
    }
    return out;
  }

  const std::vector<uint32_t>& ranks_of(const Need& n) const {
    return L.holders[dp.parts[n.part].src][n.holders].ranks;
  }

  std::vector<uint32_t> common_holders(const std::vector<Need>& needs) const {
    std::vector<uint32_t> c = ranks_of(needs[0]);
    for (size_t i = 1; i < needs.size() && !c.empty(); ++i) c = common(c, ranks_of(needs[i]));
    return c;
  }

  Unit make(const Box& b, std::vector<Need> needs) const {
    Unit u;
    u.target = base;
    u.target.box = b;
    u.needs = std::move(needs);
    u.bytes = static_cast<uint64_t>(b.numel()) * esz();
    if (dp.quant) {
      const int rd = b.nd - 2;
      u.kind = Project::Kind::kQuant;
      u.target.scale_box = b;
      u.target.scale_box.lo[rd] = b.lo[rd] / dp.quant->block_rows;
      u.target.scale_box.hi[rd] = (b.hi[rd] + dp.quant->block_rows - 1) / dp.quant->block_rows;
      u.target.scale_box.lo[rd + 1] = 0;
      u.target.scale_box.hi[rd + 1] = scale_shape[rd + 1];
      u.bytes += static_cast<uint64_t>(u.target.scale_box.numel()) * 4;
    } else {
      const auto& src = in.trainer.params[dp.parts[u.needs[0].part].src];
      u.kind = src.dtype == dp.dtype ? Project::Kind::kCopy : Project::Kind::kCast;
      if (u.kind == Project::Kind::kCopy && u.needs.size() == 1 &&
          !dp.parts[u.needs[0].part].transpose) {
        const Box& hb = L.holders[dp.parts[u.needs[0].part].src][u.needs[0].holders].box;
        u.direct = core::is_contiguous(hb.extents(), core::relative(u.needs[0].src, hb)) &&
                   core::is_contiguous(local.shape, b);
      }
    }
    return u;
  }

  // Writes a unit would produce (its runs; long runs are split later, which only helps).
  uint64_t runs(const Unit& u) const {
    uint64_t r = static_cast<uint64_t>(core::count_runs(local.shape, u.target.box));
    if (dp.quant) r += static_cast<uint64_t>(core::count_runs(scale_shape, u.target.scale_box));
    return r;
  }

  // What a unit must gather: every need but those its best-placed holder (the one holding the
  // most bytes) already has; bytes and pieces.
  std::pair<uint64_t, uint64_t> gathered(const Unit& u) const {
    std::map<uint32_t, std::pair<uint64_t, uint64_t>> held;  // rank -> bytes, needs
    uint64_t total = 0;
    for (const Need& n : u.needs) {
      const uint64_t b = static_cast<uint64_t>(n.src.numel()) *
                         core::dtype_size(in.trainer.params[dp.parts[n.part].src].dtype);
      total += b;
      for (uint32_t r : ranks_of(n)) {
        held[r].first += b;
        ++held[r].second;
      }
    }
    std::pair<uint64_t, uint64_t> best{0, 0};
    for (const auto& [r, h] : held) best = std::max(best, h);
    return {total - best.first, u.needs.size() - best.second};
  }

  // Seconds a set of units costs beyond its bytes on the wire: fixed cost per write, plus per
  // gathered piece its fixed cost and its time on the collective's links.
  double overhead(const std::vector<const Unit*>& us) const {
    double t = 0;
    for (const Unit* u : us) {
      const auto [bytes, from_others] = gathered(*u);
      t += static_cast<double>(runs(*u)) * opts.write_cost_us * 1e-6 +
           static_cast<double>(from_others) * opts.gather_cost_us * 1e-6 +
           static_cast<double>(bytes) * 8 / (gather_gbps * 1e9);
    }
    return t;
  }

  void plain(std::vector<Unit>& out) const {
    for (const Piece& p : pieces) {
      std::vector<Box> boxes;
      split(p.dest, esz(), opts.max_unit_bytes, -1, 1, local.shape.nd, boxes);
      for (const Box& b : boxes) out.push_back(make(b, needs_of(b)));
    }
  }

  // Block quantization: cells between shard boundaries, rows rounded out to whole blocks; along
  // the rows, neighbouring cells that one rank can produce together are merged.
  void quantized(std::vector<Unit>& out) const {
    const Shape& ls = local.shape;
    const int64_t br = dp.quant->block_rows;
    const int rd = ls.nd - 2;
    std::vector<std::vector<int64_t>> cuts(ls.nd - 1);
    for (int d = 0; d < ls.nd - 1; ++d) {
      std::set<int64_t> c{0, ls[d]};
      for (const Piece& p : pieces) {
        c.insert(d == rd ? p.dest.lo[d] / br * br : p.dest.lo[d]);
        c.insert(d == rd ? std::min(ls[d], (p.dest.hi[d] + br - 1) / br * br) : p.dest.hi[d]);
      }
      cuts[d].assign(c.begin(), c.end());
    }
    std::vector<size_t> idx(rd, 0);
    while (true) {
      Box lead = Box::full(ls);
      for (int d = 0; d < rd; ++d) {
        lead.lo[d] = cuts[d][idx[d]];
        lead.hi[d] = cuts[d][idx[d] + 1];
      }
      std::optional<Box> cur;
      std::vector<uint32_t> cur_common;
      auto flush = [&] {
        if (!cur) return;
        std::vector<Box> boxes;
        split(*cur, esz(), opts.max_unit_bytes, rd, br, ls.nd - 1, boxes);
        for (const Box& b : boxes) out.push_back(make(b, needs_of(b)));
        cur.reset();
      };
      for (size_t j = 0; j + 1 < cuts[rd].size(); ++j) {
        Box cell = lead;
        cell.lo[rd] = cuts[rd][j];
        cell.hi[rd] = cuts[rd][j + 1];
        const std::vector<uint32_t> c = common_holders(needs_of(cell));
        if (cur && !c.empty() && !cur_common.empty()) {
          // Merge regardless of size: the split below then cuts the outermost dims first, which
          // keeps scale rows whole (contiguous scale writes).
          std::vector<uint32_t> both = common(cur_common, c);
          if (!both.empty()) {
            cur->hi[rd] = cell.hi[rd];
            cur_common = std::move(both);
            continue;
          }
        }
        flush();
        cur = cell;
        cur_common = c;
      }
      flush();
      int d = rd - 1;
      for (; d >= 0; --d) {
        if (++idx[d] + 1 < cuts[d].size()) break;
        idx[d] = 0;
      }
      if (d < 0) break;
    }
  }

  // True when one rank holds every need, or one NVLink domain holds them all (a gather).
  bool producible(const std::vector<Need>& needs) const {
    if (!common_holders(needs).empty()) return true;
    std::vector<int> doms;
    for (size_t i = 0; i < needs.size(); ++i) {
      std::vector<int> d;
      for (uint32_t r : ranks_of(needs[i])) d.push_back(domain_of[r]);
      std::sort(d.begin(), d.end());
      d.erase(std::unique(d.begin(), d.end()), d.end());
      doms = i == 0 ? d : [&] {
        std::vector<int> both;
        std::set_intersection(doms.begin(), doms.end(), d.begin(), d.end(),
                              std::back_inserter(both));
        return both;
      }();
      if (doms.empty()) return false;
    }
    return true;
  }

  // Packing against small writes: merging units saves writes and may add an NVLink gather; it
  // is done when the fixed cost of the writes saved exceeds the gather's time (and one NVLink
  // domain can produce the merge). First the whole tensor, else neighbours pairwise.
  void pack(std::vector<Unit>& units) const {
    if (units.size() < 2) return;
    std::vector<const Unit*> all_units;
    for (const Unit& u : units) all_units.push_back(&u);
    Box whole = Box::full(local.shape);
    if (!dp.pad_dims.empty())  // padding is never written: the whole is what the source covers
      for (int d = 0; d < whole.nd; ++d) whole.hi[d] = local.parts[0].global.extent(d);
    if (whole.empty()) return;
    if (static_cast<uint64_t>(whole.numel()) * esz() <= opts.max_unit_bytes) {
      Unit w = make(whole, needs_of(whole));
      if (producible(w.needs) && overhead({&w}) < overhead(all_units)) {
        units.assign(1, std::move(w));
        return;
      }
    }
    std::sort(units.begin(), units.end(),
              [](const Unit& a, const Unit& b) { return a.target.box.lo < b.target.box.lo; });
    std::vector<Unit> out;
    for (Unit& u : units) {
      if (!out.empty()) {
        const Box& a = out.back().target.box;
        const Box& b = u.target.box;
        int diff = -1, ndiff = 0;
        for (int d = 0; d < a.nd; ++d)
          if (a.lo[d] != b.lo[d] || a.hi[d] != b.hi[d]) {
            diff = d;
            ++ndiff;
          }
        if (ndiff == 1 && a.hi[diff] == b.lo[diff]) {
          Box m = a;
          m.hi[diff] = b.hi[diff];
          if (static_cast<uint64_t>(m.numel()) * esz() <= opts.max_unit_bytes) {
            Unit mu = make(m, needs_of(m));
            if (producible(mu.needs) && overhead({&mu}) < overhead({&out.back(), &u})) {
              out.back() = std::move(mu);
              continue;
            }
          }
        }
      }
      out.push_back(std::move(u));
    }
    units.swap(out);
  }

  // Equal keys mean equal staged bytes: same param, kind, box extents, and every need with the
  // same source box at the same place in the unit's box.
  uint64_t key(const Unit& u, uint32_t param) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull; };
    mix(param);
    mix(static_cast<int64_t>(u.kind));
    for (int d = 0; d < u.target.box.nd; ++d) mix(u.target.box.extent(d));
    for (const Need& n : u.needs) {
      mix(n.part);
      const Box pb = dp.parts[n.part].transpose ? core::transpose_last2(n.src) : n.src;
      const Box db = to_dest(pb, local.parts[n.part], dp.concat_dim);
      for (int d = 0; d < n.src.nd; ++d) {
        mix(n.src.lo[d]);
        mix(n.src.hi[d]);
        mix(db.lo[d] - u.target.box.lo[d]);
      }
    }
    return h;
  }
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
  std::vector<int> domain_of;
  std::map<std::string, int> domain_ids;
  double gather_gbps = 1e12;
  for (const spec::Device& d : in.trainer.mesh.devices) {
    const auto* h = in.topology.find(d.host);
    gather_gbps = std::min(gather_gbps, opts.ipc_links || opts.hybrid_links || opts.nccl_gathers
                                            ? h->nvlink_gbps
                                            : h->nic_gbps * std::max(h->nics_per_gpu, 1));
  }
  for (const spec::Device& d : in.trainer.mesh.devices)
    domain_of.push_back(
        domain_ids.emplace(in.topology.find(d.host)->nvlink_domain, domain_ids.size())
            .first->second);

  struct Cut {
    size_t pi;
    std::vector<spec::LocalPart> parts;
    std::vector<Unit> units;
  };
  std::unordered_map<uint64_t, Cut> cut_cache;
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
        Target base;
        base.dest = static_cast<uint32_t>(plan.dests.size());
        plan.dests.push_back(
            {recv, static_cast<int32_t>(pi), false, local->shape, dp.dtype,
             static_cast<uint64_t>(local->shape.numel()) * core::dtype_size(dp.dtype)});
        L.dest_parts.push_back(local->parts);
        Shape ss;
        if (dp.quant) {
          base.scale_dest = static_cast<int32_t>(plan.dests.size());
          ss = spec::scale_shape(local->shape, *dp.quant);
          plan.dests.push_back({recv, static_cast<int32_t>(pi), true, ss, core::DType::kFP32,
                                static_cast<uint64_t>(ss.numel()) * 4});
          L.dest_parts.emplace_back();
        }
        // Receivers with the same local layout of a param (replicas, replicated params) get the
        // same units: cut once, then retarget the copies.
        uint64_t lk = 1469598103934665603ull;
        auto mix = [&](int64_t v) { lk = (lk ^ static_cast<uint64_t>(v)) * 1099511628211ull; };
        mix(static_cast<int64_t>(pi));
        for (const spec::LocalPart& lp : local->parts) {
          mix(lp.offset);
          for (int d = 0; d < lp.global.nd; ++d) {
            mix(lp.global.lo[d]);
            mix(lp.global.hi[d]);
          }
        }
        auto memo = cut_cache.find(lk);
        if (memo != cut_cache.end() && memo->second.pi == pi &&
            memo->second.parts.size() == local->parts.size() &&
            std::equal(local->parts.begin(), local->parts.end(), memo->second.parts.begin(),
                       [](const spec::LocalPart& a, const spec::LocalPart& b) {
                         return a.global == b.global && a.offset == b.offset && a.part == b.part;
                       })) {
          for (const Unit& t : memo->second.units) {
            Unit u = t;
            u.target.dest = base.dest;
            u.target.scale_dest = base.scale_dest;
            L.units.push_back(std::move(u));
          }
          continue;
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
            pieces.push_back(
                {static_cast<uint32_t>(lp.part), hi, to_dest(pb, lp, dp.concat_dim), *x});
          }
        }
        TensorCutter tc{in, opts, L, dp, *local, pieces, domain_of, gather_gbps, base, ss};
        std::vector<Unit> units;
        if (dp.quant)
          tc.quantized(units);
        else
          tc.plain(units);
        tc.pack(units);
        for (Unit& u : units) u.key = tc.key(u, static_cast<uint32_t>(pi));
        L.units.insert(L.units.end(), units.begin(), units.end());
        cut_cache[lk] = {pi, local->parts, std::move(units)};
      }
    }
  }
  return L;
}

}  // namespace weightcast::plan::detail
