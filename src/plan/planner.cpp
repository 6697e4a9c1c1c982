// Planner stages after unit cutting: choose the producing sender of every unit (least loaded
// among the holders, gathering inside an NVLink domain when no single rank holds a unit's data),
// pack gathers into phases of disjoint GPU groups, order each sender's work with a rotated
// destination order, place staging under the watermark, and lower units to writes on NICs.
#include "weightcast/plan/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <unordered_map>

#include "units.h"

namespace weightcast::plan {

using core::Box;
using detail::Layout;
using detail::Unit;

namespace {

struct Assigned {
  uint32_t sender = 0;
  bool merged = false;  // produced by another unit with the same bytes
  // More units whose targets are served from this unit's staging (indices into L.units: a
  // Target copy each was the planner's third-largest allocation on Kimi-K2).
  std::vector<uint32_t> extra;
  std::vector<int32_t> gather_of_need;  // per need: gather index or -1
  uint16_t phase = 0;
};

struct TooManyWrites {};

struct Planner {
  const spec::Inputs& in;
  const Options& opts;
  Plan& plan;
  Layout L;
  std::vector<double> load;  // per trainer rank, NIC-equivalent bytes
  std::vector<std::string> domain;
  std::vector<Assigned> asg;
  std::unordered_map<uint64_t, std::vector<size_t>> produced;  // unit key -> producing units
  double reuse_cap = 0;

  uint32_t least_loaded(const std::vector<uint32_t>& ranks) const {
    return *std::min_element(ranks.begin(), ranks.end(), [&](uint32_t a, uint32_t b) {
      return load[a] != load[b] ? load[a] < load[b] : a < b;
    });
  }

  // hybrid_links: seconds each sender's ipc link and NICs carry so far. A unit goes to the
  // holder that would finish it first on the link it would take (its receiver's host decides),
  // so same-host pairs take what their faster link can.
  std::vector<double> ipc_s, nic_s;
  bool same_host(uint32_t s, const Unit& u) const {
    return plan.senders[s].host == plan.receivers[plan.dests[u.target.dest].receiver].host;
  }
  double link_s(uint32_t s, const Unit& u) const {
    const Sender& x = plan.senders[s];
    return same_host(s, u) ? static_cast<double>(u.bytes) * 8 / (x.nvlink_gbps * 1e9)
                           : static_cast<double>(u.bytes) * 8 / (x.nic_gbps * 1e9 * x.nics);
  }
  uint32_t fastest(const std::vector<uint32_t>& ranks, const Unit& u) const {
    auto done = [&](uint32_t s) {
      const double t = link_s(s, u);
      return same_host(s, u) ? std::max(ipc_s[s] + t, nic_s[s]) : std::max(ipc_s[s], nic_s[s] + t);
    };
    return *std::min_element(ranks.begin(), ranks.end(), [&](uint32_t a, uint32_t b) {
      const double da = done(a), db = done(b);
      return da != db ? da < db : a < b;
    });
  }
  void charge(uint32_t s, const Unit& u) {
    load[s] += static_cast<double>(u.bytes);
    if (!opts.hybrid_links) return;
    (same_host(s, u) ? ipc_s : nic_s)[s] += link_s(s, u);
  }

  const detail::Holders& holders(const Unit& u, const detail::Need& n) const {
    const int src = in.inference.params[plan.dests[u.target.dest].param].parts[n.part].src;
    return L.holders[src][n.holders];
  }

  std::vector<uint32_t> common_holders(const Unit& u) const {
    std::vector<uint32_t> all = holders(u, u.needs[0]).ranks;
    for (size_t i = 1; i < u.needs.size() && !all.empty(); ++i) {
      const auto& r = holders(u, u.needs[i]).ranks;
      std::vector<uint32_t> keep;
      std::set_intersection(all.begin(), all.end(), r.begin(), r.end(), std::back_inserter(keep));
      all.swap(keep);
    }
    return all;
  }

  // NVLink domains in which every need of the unit has a holder, with their holders.
  std::map<std::string, std::vector<uint32_t>> gather_domains(const Unit& u) const {
    std::map<std::string, std::vector<uint32_t>> by_domain;
    std::map<std::string, size_t> covered;
    for (const auto& n : u.needs) {
      std::set<std::string> doms;
      for (uint32_t r : holders(u, n).ranks) {
        doms.insert(domain[r]);
        by_domain[domain[r]].push_back(r);
      }
      for (const auto& d : doms) ++covered[d];
    }
    for (auto it = by_domain.begin(); it != by_domain.end();)
      it = covered[it->first] == u.needs.size() ? std::next(it) : by_domain.erase(it);
    return by_domain;
  }

  // Serves the unit from an earlier production of the same bytes when that sender has room.
  bool reuse(size_t ui) {
    const Unit& u = L.units[ui];
    if (u.direct) return false;
    auto it = produced.find(u.key);
    if (it == produced.end()) return false;
    for (size_t v : it->second) {
      const Unit& pu = L.units[v];
      const uint32_t s = asg[v].sender;
      if (pu.kind != u.kind || pu.needs != u.needs ||
          load[s] + static_cast<double>(u.bytes) > reuse_cap)
        continue;
      asg[v].extra.push_back(static_cast<uint32_t>(ui));
      asg[ui].merged = true;
      charge(s, u);
      return true;
    }
    return false;
  }

  Status assign(size_t ui) {
    if (reuse(ui)) return Status::ok();
    const Unit& u = L.units[ui];
    Assigned& a = asg[ui];
    a.gather_of_need.assign(u.needs.size(), -1);
    if (!u.direct) produced[u.key].push_back(ui);
    const std::vector<uint32_t> all = common_holders(u);
    if (!all.empty()) {
      a.sender = opts.hybrid_links ? fastest(all, u) : least_loaded(all);
      charge(a.sender, u);
      return Status::ok();
    }
    // A gather: the least-loaded root among the holders of a domain that holds every need.
    auto doms = gather_domains(u);
    const bool cross = doms.empty();
    const Receiver& rv = plan.receivers[plan.dests[u.target.dest].receiver];
    const std::string& dp_name = in.inference.params[plan.dests[u.target.dest].param].name;
    if (cross && opts.intra_domain_gathers_only)
      return invalid(
          "'{}' on inference replica {} rank {}: box {} needs trainer data held in "
          "different NVLink domains, and --intra-node-gathers-only forbids a cross-host "
          "gather",
          dp_name, rv.replica, rv.rank, u.target.box.str());
    std::vector<uint32_t> roots;
    if (cross) {
      for (const auto& n : u.needs)
        roots.insert(roots.end(), holders(u, n).ranks.begin(), holders(u, n).ranks.end());
    } else {
      for (auto& [d, c] : doms) {
        const uint32_t best = least_loaded(c);
        if (roots.empty() || load[best] < load[roots[0]]) roots = {best};
      }
    }
    a.sender = least_loaded(roots);
    const std::string& root_dom = domain[a.sender];
    charge(a.sender, u);
    // One gather per part whose data the root does not fully hold.
    const auto& dp = in.inference.params[plan.dests[u.target.dest].param];
    auto holds = [&](const detail::Need& n, uint32_t r) {
      const auto& h = holders(u, n).ranks;
      return std::binary_search(h.begin(), h.end(), r);
    };
    std::map<uint32_t, int32_t> gather_of_part;
    for (size_t i = 0; i < u.needs.size(); ++i) {
      const auto& n = u.needs[i];
      auto it = gather_of_part.find(n.part);
      if (it == gather_of_part.end()) {
        bool part_local = true;
        for (const auto& m : u.needs)
          if (m.part == n.part) part_local = part_local && holds(m, a.sender);
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
      if (!holds(n, a.sender)) {
        std::vector<uint32_t> c;
        for (uint32_t r : holders(u, n).ranks)
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
  // gathers of one phase only within the same group), and a root's gather buffers per phase stay
  // under half the watermark. All gathers of one unit share a phase (its buffers live together);
  // their members together form the unit's group.
  void assign_phases() {
    std::vector<std::unordered_map<uint32_t, size_t>> group_of;  // phase -> rank -> group id
    std::vector<std::unordered_map<uint32_t, uint64_t>> root_bytes;
    std::map<std::vector<uint32_t>, size_t> group_ids;
    for (const Assigned& a : asg) {
      std::vector<int32_t> gs;
      for (int32_t g : a.gather_of_need)
        if (g >= 0 && std::find(gs.begin(), gs.end(), g) == gs.end()) gs.push_back(g);
      if (gs.empty()) continue;
      std::vector<uint32_t> grp{a.sender};
      uint64_t area = 0;
      for (int32_t gi : gs) {
        const Gather& g = plan.gathers[gi];
        for (const auto& p : g.pieces) grp.push_back(p.rank);
        area += static_cast<uint64_t>(g.box.numel()) *
                core::dtype_size(in.trainer.params[g.param].dtype);
      }
      std::sort(grp.begin(), grp.end());
      grp.erase(std::unique(grp.begin(), grp.end()), grp.end());
      const size_t gid = group_ids.emplace(grp, group_ids.size()).first->second;
      size_t ph = 0;
      for (;; ++ph) {
        if (ph == group_of.size()) {
          group_of.emplace_back();
          root_bytes.emplace_back();
        }
        const uint64_t rb = root_bytes[ph][a.sender];
        bool ok = rb == 0 || rb + area <= opts.staging_watermark / 2;
        for (uint32_t r : grp) {
          auto it = group_of[ph].find(r);
          ok = ok && (it == group_of[ph].end() || it->second == gid);
        }
        if (ok) break;
      }
      for (uint32_t r : grp) group_of[ph][r] = gid;
      root_bytes[ph][a.sender] += area;
      for (int32_t gi : gs) plan.gathers[gi].phase = static_cast<uint16_t>(ph + 1);
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
    if (asg[i].merged) continue;
    uint16_t ph = 0;
    for (int32_t g : asg[i].gather_of_need)
      if (g >= 0) ph = std::max(ph, plan.gathers[g].phase);
    asg[i].phase = ph;
    units_of[asg[i].sender].push_back(i);
  }
  std::vector<std::vector<uint32_t>> gathers_of(S);
  for (uint32_t gi = 0; gi < plan.gathers.size(); ++gi) {
    std::set<uint32_t> members{plan.gathers[gi].root};
    for (const auto& p : plan.gathers[gi].pieces) members.insert(p.rank);
    for (uint32_t m : members) gathers_of[m].push_back(gi);
  }
  // Each member runs a phase's gathers in ascending id order, so all members agree.
  for (auto& v : gathers_of)
    std::stable_sort(v.begin(), v.end(), [&](uint32_t a, uint32_t b) {
      return plan.gathers[a].phase < plan.gathers[b].phase;
    });
  for (uint32_t s = 0; s < S; ++s) {
    Sender& snd = plan.senders[s];
    // Gather area: the root's gather buffers of one phase, reused by the next.
    std::vector<uint64_t> area(plan.phases, 0);
    for (uint32_t gi : gathers_of[s]) {
      Gather& g = plan.gathers[gi];
      if (g.root != s) continue;
      g.root_off = area[g.phase];
      area[g.phase] +=
          static_cast<uint64_t>(g.box.numel()) * core::dtype_size(in.trainer.params[g.param].dtype);
      snd.gather_bytes_in += g.bytes;
    }
    snd.staging_gather = *std::max_element(area.begin(), area.end());
    if (snd.staging_gather > opts.staging_watermark)
      return invalid(
          "trainer rank {}: one phase gathers {} bytes, over the staging watermark of {} "
          "bytes; raise --staging-mb",
          s, snd.staging_gather, opts.staging_watermark);
    const uint64_t ring_cap = opts.staging_watermark - snd.staging_gather;
    uint64_t ring_pos = 0;
    // Rotate destinations so that senders start on different receivers (no incast).
    const uint32_t shift = static_cast<uint32_t>(uint64_t{s} * R / S);
    auto rot = [&](const Unit& u) { return (plan.dests[u.target.dest].receiver + R - shift) % R; };
    auto& us = units_of[s];
    std::stable_sort(us.begin(), us.end(), [&](size_t a, size_t b) {
      const Unit &ua = L.units[a], &ub = L.units[b];
      if (asg[a].phase != asg[b].phase) return asg[a].phase < asg[b].phase;
      if (rot(ua) != rot(ub)) return rot(ua) < rot(ub);
      return ua.target.dest != ub.target.dest ? ua.target.dest < ub.target.dest : a < b;
    });
    snd.nic_bytes.assign(snd.nics, 0);
    size_t next_gather = 0;
    auto add_write = [&](Write w) {
      Receiver& rv = plan.receivers[plan.dests[w.dest].receiver];
      // The engine stripes every write over all NICs of the group, shard i being
      // [i*len/n, (i+1)*len/n) (transport::stripe): the plan counts each NIC's bytes that way, so
      // the dry-run report and the run agree. `nic` / `dst_nic` name the NIC of the first shard.
      w.nic = 0;
      w.dst_nic = 0;
      for (std::vector<uint64_t>* side : {&snd.nic_bytes, &rv.nic_bytes}) {
        const uint64_t n = side->size();
        for (uint64_t i = 0; i < n; ++i) (*side)[i] += (i + 1) * w.len / n - i * w.len / n;
      }
      rv.expected_imms[w.phase] += 1;
      rv.bytes_in += w.len;
      snd.bytes_out += w.len;
      if (plan.writes.size() >= opts.max_writes) throw TooManyWrites{};
      snd.tasks.push_back({Task::Op::kWrite, static_cast<uint32_t>(plan.writes.size())});
      plan.writes.push_back(w);
    };
    // Lowers a contiguous byte range to writes of at most max_write bytes.
    auto range_writes = [&](Write w, uint64_t len) {
      for (uint64_t done = 0; done < len; done += opts.max_write_bytes) {
        Write x = w;
        x.src_off += done;
        x.dst_off += done;
        x.len = std::min<uint64_t>(opts.max_write_bytes, len - done);
        add_write(x);
      }
    };
    // Lowers a box of a dest tensor, staged row-major at `off`, to writes.
    auto staged_writes = [&](uint32_t dest, const Box& box, uint64_t off, int32_t proj,
                             uint16_t ph) {
      const DestTensor& dt = plan.dests[dest];
      const uint64_t esz = core::dtype_size(dt.dtype);
      core::for_each_run(dt.shape, box, [&](int64_t eoff, int64_t elen) {
        Write w;
        w.sender = s;
        w.dest = dest;
        w.project = proj;
        w.phase = ph;
        w.src_off = off;
        w.dst_off = static_cast<uint64_t>(eoff) * esz;
        range_writes(w, static_cast<uint64_t>(elen) * esz);
        off += static_cast<uint64_t>(elen) * esz;
      });
    };
    for (uint16_t ph = 0; ph < plan.phases; ++ph) {
      for (; next_gather < gathers_of[s].size() &&
             plan.gathers[gathers_of[s][next_gather]].phase == ph;
           ++next_gather)
        snd.tasks.push_back({Task::Op::kGather, gathers_of[s][next_gather]});
      for (size_t ui : us) {
        if (asg[ui].phase != ph) continue;
        const Unit& u = L.units[ui];
        const DestTensor& dt = plan.dests[u.target.dest];
        const auto& dp = in.inference.params[dt.param];
        const uint64_t esz = core::dtype_size(dt.dtype);
        if (u.direct) {
          const auto& n0 = u.needs[0];
          const Box& shard = holders(u, n0).box;
          Write w;
          w.sender = s;
          w.dest = u.target.dest;
          w.src_param = dp.parts[n0.part].src;
          w.phase = ph;
          w.src_off = core::offset_of(shard.extents(), core::relative(n0.src, shard)) * esz;
          w.dst_off = core::offset_of(dt.shape, u.target.box) * esz;
          range_writes(w, u.bytes);
          continue;
        }
        if (u.bytes > ring_cap)
          return invalid(
              "trainer rank {}: a {}-byte unit of '{}' does not fit the staging ring of {} "
              "bytes; raise --staging-mb",
              s, u.bytes, dp.name, ring_cap);
        if (ring_pos + u.bytes > ring_cap) ring_pos = 0;
        Project p;
        p.sender = s;
        p.dest = u.target.dest;
        p.phase = ph;
        p.kind = u.kind;
        p.box = u.target.box;
        for (size_t i = 0; i < u.needs.size(); ++i)
          p.inputs.push_back({u.needs[i].part, u.needs[i].src, asg[ui].gather_of_need[i]});
        p.staging_off = snd.staging_gather + ring_pos;
        p.out_bytes = static_cast<uint64_t>(u.target.box.numel()) * esz;
        p.scale_dest = u.target.scale_dest;
        p.scale_box = u.target.scale_box;
        p.scale_off = p.staging_off + p.out_bytes;
        ring_pos += u.bytes;
        snd.staging_ring = std::max(snd.staging_ring, ring_pos);
        const auto pid = static_cast<int32_t>(plan.projects.size());
        snd.tasks.push_back({Task::Op::kProject, static_cast<uint32_t>(pid)});
        plan.projects.push_back(std::move(p));
        const uint64_t staged = plan.projects.back().staging_off,
                       scales = plan.projects.back().scale_off;
        // The unit's own target, then every receiver served from the same staged bytes.
        std::vector<const detail::Target*> targets{&u.target};
        for (uint32_t x : asg[ui].extra) targets.push_back(&L.units[x].target);
        for (const detail::Target* t : targets) {
          staged_writes(t->dest, t->box, staged, pid, ph);
          if (t->scale_dest >= 0)
            staged_writes(static_cast<uint32_t>(t->scale_dest), t->scale_box, scales, pid, ph);
        }
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
    for (int d : p.pad_dims) mix(fmt::format("pad{}", d));
    if (p.concat_whole) mix("whole");
    if (p.view_items) mix(fmt::format("view{}", p.view_items));
    if (p.quant)
      mix(fmt::format("{}x{}{}", p.quant->block_rows, p.quant->block_cols, p.quant->scale_name));
  }
  for (const auto& hi : in.topology.hosts) {
    mix(fmt::format("{}/{}/{}/{}/{}/{}", hi.name, hi.gpus, hi.nics_per_gpu, hi.nic_gbps,
                    hi.nvlink_gbps, hi.nvlink_domain));
    if (hi.gather_us != 0) mix(fmt::format("gather_us={}", hi.gather_us));  // (older digests hold)
  }
  return fmt::format("fnv1a64:{:016x}", h);
}

static Result<Plan> plan_unguarded(const spec::Inputs& in, const Options& options);

// Planning is bounded (Options.max_writes; the specs' own limits) and never aborts on memory.
Result<Plan> make_plan(const spec::Inputs& in, const Options& options) {
  try {
    return plan_unguarded(in, options);
  } catch (const TooManyWrites&) {
    return invalid(
        "the plan needs more than {} writes (Options.max_writes): raise "
        "max_write_bytes, or the limit for a deliberately huge job",
        options.max_writes);
  } catch (const std::bad_alloc&) {
    return invalid(
        "planning ran out of memory: the specs describe more than this process can "
        "plan");
  }
}

static Result<Plan> plan_unguarded(const spec::Inputs& in, const Options& options) {
  if (options.max_write_bytes == 0) return invalid("max write size must be positive");
  Options opts = options;
  if (opts.gather_cost_us < 0) {  // the topology's: the costliest trainer host's
    opts.gather_cost_us = 0;
    for (const spec::Device& d : in.trainer.mesh.devices)
      if (const spec::HostInfo* h = in.topology.find(d.host))
        opts.gather_cost_us = std::max(opts.gather_cost_us, h->gather_us);
  }
  if (opts.ipc_links && opts.hybrid_links)
    return invalid("ipc_links and hybrid_links are two backends' costings: pick one");
  if (opts.ipc_links) {  // the ipc backend reaches peers on its own host only
    const spec::Device* first = &in.trainer.mesh.devices.at(0);
    auto check = [&](const spec::Device& d, const char* side, size_t rank) -> Status {
      if (d.host == first->host) return Status::ok();
      return invalid(
          "ipc links join ranks of one host: {} rank {} is on '{}', trainer rank 0 on "
          "'{}' (use the fabric or verbs backend across hosts)",
          side, rank, d.host, first->host);
    };
    for (size_t r = 0; r < in.trainer.mesh.devices.size(); ++r)
      if (Status st = check(in.trainer.mesh.devices[r], "trainer", r); !st) return st;
    for (const spec::Mesh& m : in.inference.replicas)
      for (size_t r = 0; r < m.devices.size(); ++r)
        if (Status st = check(m.devices[r], "inference", r); !st) return st;
  }
  Plan plan;
  plan.options = opts;
  for (const auto& p : in.trainer.params) plan.source_names.push_back(p.name);
  for (const auto& p : in.inference.params) plan.dest_names.push_back(p.name);
  Planner pl{in, opts, plan, detail::cut_units(in, opts, plan), {}, {}, {}};
  const auto S = static_cast<uint32_t>(in.trainer.mesh.size());
  pl.load.assign(S, 0.0);
  pl.ipc_s.assign(S, 0.0);
  pl.nic_s.assign(S, 0.0);
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
  double total = 0;
  for (const Unit& u : pl.L.units) total += static_cast<double>(u.bytes);
  // A sender may take reused work until it carries 2% more than an even share.
  pl.reuse_cap = 1.02 * total / S;
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
