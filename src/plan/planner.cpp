// Planner stages after unit cutting: choose the producing sender of every unit (least loaded
// among the holders, gathering inside an NVLink domain when no single rank holds a unit's data),
// pack gathers into phases of disjoint GPU groups, order each sender's work with a rotated
// destination order, place staging under the watermark, and lower units to writes on NICs.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include "units.h"
#include "weightcast/plan/planner.h"

namespace weightcast::plan {

using core::Box;
using detail::Layout;
using detail::Unit;

namespace {

struct Assigned {
  uint32_t sender = 0;
  std::vector<int32_t> gather_of_need;  // per need: gather index or -1
  uint16_t phase = 0;
};

struct Planner {
  const spec::Inputs& in;
  const Options& opts;
  Plan& plan;
  Layout L;
  std::vector<double> load;  // per trainer rank, NIC-equivalent bytes
  std::vector<std::string> domain;
  std::vector<Assigned> asg;

  uint32_t least_loaded(const std::vector<uint32_t>& ranks) const {
    return *std::min_element(ranks.begin(), ranks.end(), [&](uint32_t a, uint32_t b) {
      return load[a] != load[b] ? load[a] < load[b] : a < b;
    });
  }

  Status assign(size_t ui) {
    const Unit& u = L.units[ui];
    Assigned& a = asg[ui];
    a.gather_of_need.assign(u.needs.size(), -1);
    auto holders = [&](const detail::Need& n) -> const detail::Holders& {
      const int src = in.inference.params[plan.dests[u.dest].param].parts[n.part].src;
      return L.holders[src][n.holders];
    };
    // Ranks that hold every need of the unit.
    std::vector<uint32_t> all = holders(u.needs[0]).ranks;
    for (size_t i = 1; i < u.needs.size() && !all.empty(); ++i) {
      const auto& r = holders(u.needs[i]).ranks;
      std::vector<uint32_t> keep;
      std::set_intersection(all.begin(), all.end(), r.begin(), r.end(), std::back_inserter(keep));
      all.swap(keep);
    }
    if (!all.empty()) {
      a.sender = least_loaded(all);
      load[a.sender] += static_cast<double>(u.bytes);
      return Status::ok();
    }
    // A gather: pick the NVLink domain where every need has a holder, then the least-loaded root.
    std::map<std::string, std::vector<uint32_t>> by_domain;  // domain -> candidate roots
    std::map<std::string, size_t> covered;
    for (const auto& n : u.needs) {
      std::set<std::string> doms;
      for (uint32_t r : holders(n).ranks) {
        doms.insert(domain[r]);
        by_domain[domain[r]].push_back(r);
      }
      for (const auto& d : doms) ++covered[d];
    }
    std::vector<uint32_t> roots;
    bool cross = true;
    for (auto& [d, cnt] : covered) {
      if (cnt != u.needs.size()) continue;
      auto& c = by_domain[d];
      const uint32_t best = least_loaded(c);
      if (roots.empty() || load[best] < load[roots[0]]) roots = {best};
      cross = false;
    }
    const std::string& dp_name = in.inference.params[plan.dests[u.dest].param].name;
    if (cross) {
      if (opts.intra_domain_gathers_only)
        return invalid("'{}' on inference replica {} rank {}: unit {} needs trainer data held on "
                       "different NVLink domains, and --intra-node-gathers-only forbids a "
                       "cross-host gather", dp_name, plan.receivers[plan.dests[u.dest].receiver].replica,
                       plan.receivers[plan.dests[u.dest].receiver].rank, u.box.str());
      std::vector<uint32_t> any;
      for (auto& [d, c] : by_domain) any.insert(any.end(), c.begin(), c.end());
      roots = {least_loaded(any)};
    }
    a.sender = roots[0];
    const std::string& root_dom = domain[a.sender];
    load[a.sender] += static_cast<double>(u.bytes);
    // One gather per part whose data the root does not fully hold.
    const auto& dp = in.inference.params[plan.dests[u.dest].param];
    std::map<uint32_t, int32_t> gather_of_part;
    for (size_t i = 0; i < u.needs.size(); ++i) {
      const auto& n = u.needs[i];
      const auto& h = holders(n);
      const bool local = std::binary_search(h.ranks.begin(), h.ranks.end(), a.sender);
      auto it = gather_of_part.find(n.part);
      if (it == gather_of_part.end()) {
        bool part_local = true;
        for (const auto& m : u.needs)
          if (m.part == n.part)
            part_local = part_local && std::binary_search(holders(m).ranks.begin(),
                                                           holders(m).ranks.end(), a.sender);
        if (part_local) continue;
        Gather g;
        g.param = dp.parts[n.part].src;
        g.root = a.sender;
        g.box = n.src;
        g.cross_domain = cross;
        it = gather_of_part.emplace(n.part, static_cast<int32_t>(plan.gathers.size())).first;
        plan.gathers.push_back(std::move(g));
      }
      Gather& g = plan.gathers[it->second];
      for (int d = 0; d < g.box.nd; ++d) {
        g.box.lo[d] = std::min(g.box.lo[d], n.src.lo[d]);
        g.box.hi[d] = std::max(g.box.hi[d], n.src.hi[d]);
      }
      uint32_t from = a.sender;
      if (!local) {
        std::vector<uint32_t> c;
        for (uint32_t r : h.ranks)
          if (cross || domain[r] == root_dom) c.push_back(r);
        from = least_loaded(c);
        const uint64_t b = static_cast<uint64_t>(n.src.numel()) *
                           core::dtype_size(in.trainer.params[g.param].dtype);
        g.bytes += b;
        load[from] += static_cast<double>(b) * 0.1;  // NVLink is ~10x a NIC
      }
      g.pieces.push_back({from, n.src});
      a.gather_of_need[i] = it->second;
    }
    return Status::ok();
  }

  // First-fit phases: gathers in one phase use disjoint GPU groups (a GPU may join several
  // gathers of one phase only with the same group), and a root's gather bytes per phase stay
  // under half the watermark.
  void assign_phases() {
    std::vector<std::map<uint32_t, std::vector<uint32_t>>> group_of;  // phase -> rank -> group
    std::vector<std::map<uint32_t, uint64_t>> root_bytes;
    for (Gather& g : plan.gathers) {
      std::vector<uint32_t> grp{g.root};
      for (const auto& p : g.pieces) grp.push_back(p.rank);
      std::sort(grp.begin(), grp.end());
      grp.erase(std::unique(grp.begin(), grp.end()), grp.end());
      const uint64_t area = static_cast<uint64_t>(g.box.numel()) *
                            core::dtype_size(in.trainer.params[g.param].dtype);
      size_t ph = 0;
      for (;; ++ph) {
        if (ph == group_of.size()) {
          group_of.emplace_back();
          root_bytes.emplace_back();
        }
        bool ok = root_bytes[ph][g.root] + area <= opts.staging_watermark / 2 ||
                  root_bytes[ph][g.root] == 0;
        for (uint32_t r : grp) {
          auto it = group_of[ph].find(r);
          ok = ok && (it == group_of[ph].end() || it->second == grp);
        }
        if (ok) break;
      }
      for (uint32_t r : grp) group_of[ph][r] = grp;
      root_bytes[ph][g.root] += area;
      g.phase = static_cast<uint16_t>(ph + 1);
    }
    plan.phases = static_cast<uint16_t>(group_of.size() + 1);
  }

  Status emit();
};

Status Planner::emit() {
  const uint32_t S = static_cast<uint32_t>(in.trainer.mesh.size());
  const uint32_t R = static_cast<uint32_t>(plan.receivers.size());
  for (auto& rv : plan.receivers) {
    rv.expected_imms.assign(plan.phases, 0);
    rv.nic_bytes.assign(rv.nics, 0);
  }
  std::vector<std::vector<size_t>> units_of(S);
  for (size_t i = 0; i < L.units.size(); ++i) {
    uint16_t ph = 0;
    for (int32_t g : asg[i].gather_of_need)
      if (g >= 0) ph = std::max(ph, plan.gathers[g].phase);
    asg[i].phase = ph;
    units_of[asg[i].sender].push_back(i);
  }
  std::vector<std::vector<uint32_t>> gathers_of(S);  // ascending ids
  for (uint32_t gi = 0; gi < plan.gathers.size(); ++gi) {
    std::set<uint32_t> members{plan.gathers[gi].root};
    for (const auto& p : plan.gathers[gi].pieces) members.insert(p.rank);
    for (uint32_t m : members) gathers_of[m].push_back(gi);
  }
  for (uint32_t s = 0; s < S; ++s) {
    Sender& snd = plan.senders[s];
    // Gather area: the root's gather buffers of one phase, reused by the next.
    std::vector<uint64_t> area(plan.phases, 0);
    for (uint32_t gi : gathers_of[s]) {
      Gather& g = plan.gathers[gi];
      if (g.root != s) continue;
      const uint64_t b = static_cast<uint64_t>(g.box.numel()) *
                         core::dtype_size(in.trainer.params[g.param].dtype);
      g.root_off = area[g.phase];
      area[g.phase] += b;
      snd.gather_bytes_in += g.bytes;
    }
    snd.staging_gather = *std::max_element(area.begin(), area.end());
    if (snd.staging_gather > opts.staging_watermark)
      return invalid("trainer rank {}: one phase gathers {} bytes, over the staging watermark of {} "
                     "bytes; raise --staging-mb", s, snd.staging_gather, opts.staging_watermark);
    const uint64_t ring_cap = opts.staging_watermark - snd.staging_gather;
    uint64_t ring_pos = 0;
    // Rotate destinations so that senders start on different receivers (no incast).
    const uint32_t shift = static_cast<uint32_t>(uint64_t{s} * R / S);
    auto& us = units_of[s];
    std::stable_sort(us.begin(), us.end(), [&](size_t a, size_t b) {
      const Unit &ua = L.units[a], &ub = L.units[b];
      if (asg[a].phase != asg[b].phase) return asg[a].phase < asg[b].phase;
      const uint32_t ra = (plan.dests[ua.dest].receiver + R - shift) % R;
      const uint32_t rb = (plan.dests[ub.dest].receiver + R - shift) % R;
      if (ra != rb) return ra < rb;
      return ua.dest != ub.dest ? ua.dest < ub.dest : a < b;
    });
    snd.nic_bytes.assign(snd.nics, 0);
    size_t next_gather = 0;
    auto add_write = [&](Write w) {
      Receiver& rv = plan.receivers[plan.dests[w.dest].receiver];
      const auto nic = std::min_element(snd.nic_bytes.begin(), snd.nic_bytes.end());
      const auto dnic = std::min_element(rv.nic_bytes.begin(), rv.nic_bytes.end());
      w.nic = static_cast<uint8_t>(nic - snd.nic_bytes.begin());
      w.dst_nic = static_cast<uint8_t>(dnic - rv.nic_bytes.begin());
      *nic += w.len;
      *dnic += w.len;
      rv.expected_imms[w.phase] += 1;
      rv.bytes_in += w.len;
      snd.bytes_out += w.len;
      snd.tasks.push_back({Task::Op::kWrite, static_cast<uint32_t>(plan.writes.size())});
      plan.writes.push_back(w);
    };
    // Lowers a box of a dest tensor, staged at `off`, to writes of at most max_write bytes.
    auto staged_writes = [&](uint32_t dest, const Box& box, uint64_t off, int32_t proj, uint16_t ph) {
      const DestTensor& dt = plan.dests[dest];
      const uint64_t esz = core::dtype_size(dt.dtype);
      core::for_each_run(dt.shape, box, [&](int64_t eoff, int64_t elen) {
        for (uint64_t done = 0, len = elen * esz; done < len; done += opts.max_write_bytes) {
          Write w;
          w.sender = s;
          w.dest = dest;
          w.project = proj;
          w.phase = ph;
          w.src_off = off + done;
          w.dst_off = eoff * esz + done;
          w.len = std::min<uint64_t>(opts.max_write_bytes, len - done);
          add_write(w);
        }
        off += elen * esz;
      });
    };
    for (uint16_t ph = 0; ph < plan.phases; ++ph) {
      for (; next_gather < gathers_of[s].size() && plan.gathers[gathers_of[s][next_gather]].phase == ph;
           ++next_gather)
        snd.tasks.push_back({Task::Op::kGather, gathers_of[s][next_gather]});
      for (size_t ui : us) {
        if (asg[ui].phase != ph) continue;
        const Unit& u = L.units[ui];
        const DestTensor& dt = plan.dests[u.dest];
        const auto& dp = in.inference.params[dt.param];
        const auto& n0 = u.needs[0];
        const int src = dp.parts[n0.part].src;
        const Box& shard = L.holders[src][n0.holders].box;
        const uint64_t esz = core::dtype_size(dt.dtype);
        if (u.kind == Project::Kind::kCopy && u.needs.size() == 1 && asg[ui].gather_of_need[0] < 0 &&
            !dp.parts[n0.part].transpose && core::is_contiguous(shard.extents(), core::relative(n0.src, shard)) &&
            core::is_contiguous(dt.shape, u.box)) {
          const uint64_t src0 = core::offset_of(shard.extents(), core::relative(n0.src, shard)) * esz;
          const uint64_t dst0 = core::offset_of(dt.shape, u.box) * esz;
          for (uint64_t done = 0; done < u.bytes; done += opts.max_write_bytes) {
            Write w;
            w.sender = s;
            w.dest = u.dest;
            w.src_param = src;
            w.phase = ph;
            w.src_off = src0 + done;
            w.dst_off = dst0 + done;
            w.len = std::min<uint64_t>(opts.max_write_bytes, u.bytes - done);
            add_write(w);
          }
          continue;
        }
        if (u.bytes > ring_cap)
          return invalid("trainer rank {}: a {}-byte unit of '{}' does not fit the staging ring of {} "
                         "bytes; raise --staging-mb", s, u.bytes, dp.name, ring_cap);
        if (ring_pos + u.bytes > ring_cap) ring_pos = 0;
        Project p;
        p.sender = s;
        p.dest = u.dest;
        p.phase = ph;
        p.kind = u.kind;
        p.box = u.box;
        for (size_t i = 0; i < u.needs.size(); ++i)
          p.inputs.push_back({u.needs[i].part, u.needs[i].src, asg[ui].gather_of_need[i]});
        p.staging_off = snd.staging_gather + ring_pos;
        p.out_bytes = static_cast<uint64_t>(u.box.numel()) * esz;
        p.scale_dest = u.scale_dest;
        p.scale_box = u.scale_box;
        p.scale_off = p.staging_off + p.out_bytes;
        ring_pos += u.bytes;
        snd.staging_ring = std::max(snd.staging_ring, ring_pos);
        const auto pid = static_cast<int32_t>(plan.projects.size());
        snd.tasks.push_back({Task::Op::kProject, static_cast<uint32_t>(pid)});
        plan.projects.push_back(std::move(p));
        const Project& pr = plan.projects.back();
        staged_writes(u.dest, u.box, pr.staging_off, pid, ph);
        if (pr.scale_dest >= 0) staged_writes(pr.scale_dest, pr.scale_box, pr.scale_off, pid, ph);
      }
    }
  }
  return Status::ok();
}

}  // namespace

std::string digest_inputs(const spec::Inputs& in) {
  // FNV-1a over what the planner depends on: names, shapes, dtypes, placements, meshes, hosts.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  };
  auto mesh = [&](const spec::Mesh& m) {
    for (const auto& a : m.axes) mix(fmt::format("{}={}", a.name, a.size));
    for (const auto& d : m.devices) mix(fmt::format("{}:{}", d.host, d.gpu));
  };
  auto placement = [&](const spec::PlacementMap& pm) {
    for (const auto& [k, v] : pm) mix(k + v.str());
  };
  mix(std::to_string(in.scale));
  mesh(in.trainer.mesh);
  for (const auto& p : in.trainer.params) {
    mix(p.name + p.shape.str() + std::string(core::dtype_name(p.dtype)));
    placement(p.placement);
  }
  for (const auto& m : in.inference.replicas) mesh(m);
  for (const auto& p : in.inference.params) {
    mix(p.name + p.shape.str() + std::string(core::dtype_name(p.dtype)));
    placement(p.placement);
    for (const auto& pt : p.parts) mix(fmt::format("{}{}", pt.src, pt.transpose));
    mix(std::to_string(p.concat_dim));
    if (p.quant) mix(fmt::format("{}x{}{}", p.quant->block_rows, p.quant->block_cols, p.quant->scale_name));
  }
  for (const auto& hi : in.topology.hosts)
    mix(fmt::format("{}/{}/{}/{}/{}/{}", hi.name, hi.gpus, hi.nics_per_gpu, hi.nic_gbps,
                    hi.nvlink_gbps, hi.nvlink_domain));
  return fmt::format("fnv1a64:{:016x}", h);
}

Result<Plan> make_plan(const spec::Inputs& in, const Options& opts) {
  if (opts.max_write_bytes == 0) return invalid("max write size must be positive");
  Plan plan;
  plan.options = opts;
  for (const auto& p : in.trainer.params) plan.source_names.push_back(p.name);
  for (const auto& p : in.inference.params) plan.dest_names.push_back(p.name);
  Planner pl{in, opts, plan, detail::cut_units(in, opts, plan), {}, {}, {}};
  const auto S = static_cast<uint32_t>(in.trainer.mesh.size());
  pl.load.assign(S, 0.0);
  for (uint32_t r = 0; r < S; ++r) {
    const spec::Device& d = in.trainer.mesh.devices[r];
    const spec::HostInfo* h = in.topology.find(d.host);
    pl.domain.push_back(h->nvlink_domain);
    plan.senders.push_back({r, d.host, d.gpu, h->nics_per_gpu, h->nic_gbps, h->nvlink_gbps});
  }
  // Largest units first: greedy least-loaded assignment then balances well (LPT).
  std::vector<size_t> order(pl.L.units.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return pl.L.units[a].bytes > pl.L.units[b].bytes; });
  pl.asg.resize(pl.L.units.size());
  for (size_t ui : order)
    if (Status s = pl.assign(ui); !s) return s;
  pl.assign_phases();
  if (Status s = pl.emit(); !s) return s;
  plan.inputs_digest = digest_inputs(in);
  plan.scale = in.scale;
  return plan;
}

}  // namespace weightcast::plan
