// Cutting a plan into ranks' parts (see part.h).
#include "weightcast/plan/part.h"

#include <map>
#include <set>

namespace weightcast::plan {

namespace {

// Tables every part keeps whole: names, options, senders (without their tasks) and receivers.
Plan skeleton(const Plan& whole, const char* role, uint32_t rank) {
  Plan p;
  p.options = whole.options;
  p.inputs_digest = whole.inputs_digest;
  p.scale = whole.scale;
  p.phases = whole.phases;
  p.source_names = whole.source_names;
  p.dest_names = whole.dest_names;
  p.senders = whole.senders;
  for (Sender& s : p.senders) s.tasks.clear();
  p.receivers = whole.receivers;
  p.part_role = role;
  p.part_rank = rank;
  return p;
}

// Keeps the dests in `keep` (whole-plan ids, ascending) and returns whole id -> part id.
std::map<uint32_t, uint32_t> keep_dests(const Plan& whole, const std::set<uint32_t>& keep,
                                        Plan& p) {
  std::map<uint32_t, uint32_t> m;
  for (uint32_t d : keep) {
    m[d] = static_cast<uint32_t>(p.dests.size());
    p.dests.push_back(whole.dests[d]);
    p.dest_ids.push_back(global_dest(whole, d));
  }
  return m;
}

// Names of params the part never refers to are blanked (the tables keep their length, so param
// indices stay valid): with thousands of experts the names would otherwise dominate every part.
void blank_unused_names(Plan& p) {
  std::vector<bool> src(p.source_names.size()), dst(p.dest_names.size());
  for (const DestTensor& d : p.dests) dst[static_cast<size_t>(d.param)] = true;
  for (const Gather& g : p.gathers) src[static_cast<size_t>(g.param)] = true;
  for (const Write& w : p.writes)
    if (w.src_param >= 0) src[static_cast<size_t>(w.src_param)] = true;
  for (size_t i = 0; i < src.size(); ++i)
    if (!src[i]) p.source_names[i].clear();
  for (size_t i = 0; i < dst.size(); ++i)
    if (!dst[i]) p.dest_names[i].clear();
}

}  // namespace

Plan trainer_part(const Plan& whole, uint32_t rank) {
  Plan p = skeleton(whole, "trainer", rank);
  std::set<uint32_t> roots{rank};
  for (const Gather& g : whole.gathers)
    for (const Gather::Piece& x : g.pieces)
      if (x.rank == rank) roots.insert(g.root);
  std::vector<int64_t> gmap(whole.gathers.size(), -1), pmap(whole.projects.size(), -1),
      wmap(whole.writes.size(), -1);
  for (uint32_t g = 0; g < whole.gathers.size(); ++g)
    if (roots.count(whole.gathers[g].root)) {
      gmap[g] = static_cast<int64_t>(p.gathers.size());
      p.gathers.push_back(whole.gathers[g]);
    }
  std::set<uint32_t> dests;
  for (uint32_t i = 0; i < whole.projects.size(); ++i) {
    const Project& x = whole.projects[i];
    if (x.sender != rank) continue;
    pmap[i] = static_cast<int64_t>(p.projects.size());
    p.projects.push_back(x);
    dests.insert(x.dest);
    if (x.scale_dest >= 0) dests.insert(static_cast<uint32_t>(x.scale_dest));
  }
  for (uint32_t i = 0; i < whole.writes.size(); ++i)
    if (whole.writes[i].sender == rank) {
      wmap[i] = static_cast<int64_t>(p.writes.size());
      p.writes.push_back(whole.writes[i]);
      dests.insert(whole.writes[i].dest);
    }
  const auto dmap = keep_dests(whole, dests, p);
  for (Project& x : p.projects) {
    x.dest = dmap.at(x.dest);
    if (x.scale_dest >= 0) x.scale_dest = static_cast<int32_t>(dmap.at(x.scale_dest));
    for (Project::Input& in : x.inputs)
      if (in.gather >= 0) in.gather = static_cast<int32_t>(gmap[in.gather]);
  }
  for (Write& w : p.writes) {
    w.dest = dmap.at(w.dest);
    if (w.project >= 0) w.project = static_cast<int32_t>(pmap[w.project]);
  }
  for (const Task& t : whole.senders[rank].tasks) {
    const std::vector<int64_t>& m = t.op == Task::Op::kGather    ? gmap
                                    : t.op == Task::Op::kProject ? pmap
                                                                 : wmap;
    p.senders[rank].tasks.push_back({t.op, static_cast<uint32_t>(m[t.index])});
  }
  blank_unused_names(p);
  return p;
}

Plan inference_part(const Plan& whole, uint32_t receiver) {
  Plan p = skeleton(whole, "inference", receiver);
  std::set<uint32_t> dests;
  for (uint32_t d = 0; d < whole.dests.size(); ++d)
    if (whole.dests[d].receiver == receiver) dests.insert(d);
  const auto dmap = keep_dests(whole, dests, p);
  for (const Write& w : whole.writes) {
    auto it = dmap.find(w.dest);
    if (it == dmap.end()) continue;
    Write x = w;
    x.dest = it->second;
    x.project = Write::kDirect;
    x.src_param = -1;
    x.src_off = 0;
    p.writes.push_back(x);
  }
  blank_unused_names(p);
  return p;
}

}  // namespace weightcast::plan
