// The step simulator, event by event: each sender walks its tasks as the executor does (a phase's
// gathers meet their group, projections wait for their staging slot, writes queue on the NIC the
// plan striped them over), each write shard takes its bytes' time on the sender's NIC, on the
// receiver's NIC and on both hosts' shared paths (capacity consumed at each one's own rate, so
// flows sharing an ingress split it), and the step ends at each receiver's last immediate (plus
// its staging copies).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <deque>
#include <fstream>
#include <map>
#include <numeric>
#include <queue>
#include <set>

#include "sim_internal.h"
#include "weightcast/sim/sim.h"

namespace weightcast::sim {

namespace {
using plan::Plan;
using plan::Task;

struct Lane {
  double free = 0, busy = 0;
};
struct Job {
  uint32_t write;
  uint64_t bytes;
  double ready;
};
struct Event {
  double t;
  uint32_t kind;  // 0: a sender's compute track, 1: one of its lanes
  uint32_t sender, lane;
  uint64_t seq;
  bool operator>(const Event& o) const {
    if (t != o.t) return t > o.t;
    if (kind != o.kind) return kind < o.kind;  // lanes first: completions free ring slots
    return seq > o.seq;
  }
};

// A union-find over ranks, one per phase: the ranks a phase's gathers tie together meet.
struct Groups {
  std::vector<uint32_t> up;
  uint32_t find(uint32_t x) {
    while (up[x] != x) x = up[x] = up[up[x]];
    return x;
  }
};

class Sim {
 public:
  Sim(const Plan& p, const Profile& f, const Options& o, Tracer& tr)
      : p_(p), f_(f), o_(o), tr_(tr) {}

  Result<Simulation> run();

 private:
  struct SenderState {
    double t = 0, start = 0, compute_end = 0, copy_free = 0, ready_at = 0;
    size_t ti = 0;
    int32_t blocked_on = -1;  // a projection whose writes are not all simulated yet
    bool at_barrier = false, done = false;
    std::deque<uint32_t> inflight;  // projections whose staging slots are still read
    std::vector<std::deque<Job>> queues;
    std::vector<bool> scheduled;
    std::map<int32_t, double> mirror_ready;
    Stages st;
  };
  struct Barrier {
    uint32_t expected = 0;
    std::vector<std::pair<uint32_t, double>> arrived;
  };

  // Whether sender s reaches receiver r over an ipc link (else its NICs).
  bool ipc_pair(uint32_t s, uint32_t r) const {
    return p_.options.ipc_links ||
           (p_.options.hybrid_links && p_.senders[s].host == p_.receivers[r].host);
  }
  bool ipc_write(const plan::Write& w) const {
    return ipc_pair(w.sender, p_.dests[w.dest].receiver);
  }
  // A projection's staging range: its output, then its scales where planned.
  static std::pair<uint64_t, uint64_t> slot(const plan::Project& q) {
    return {q.staging_off, q.scale_dest >= 0
                               ? q.scale_off + static_cast<uint64_t>(q.scale_box.numel()) * 4
                               : q.staging_off + q.out_bytes};
  }
  double nic_rate(double topo_gbps) const {
    return (f_.nic_gbps > 0 ? f_.nic_gbps : topo_gbps) * 1e9 / 8 * f_.nic_efficiency;
  }
  double ipc_rate(uint32_t s) const {
    return f_.nvlink_bytes_per_s > 0 ? f_.nvlink_bytes_per_s : p_.senders[s].nvlink_gbps * 1e9 / 8;
  }
  void push(double t, uint32_t kind, uint32_t s, uint32_t lane) {
    heap_.push({t, kind, s, lane, seq_++});
  }
  void prepare();
  Status compute(uint32_t s, double now);
  void lane_event(uint32_t s, uint32_t lane, double now);
  void enqueue(uint32_t s, uint32_t wi, double ready);
  void gather_arrive(uint32_t s, double now);
  void write_done(uint32_t wi, double t);

  const Plan& p_;
  const Profile& f_;
  const Options& o_;
  Tracer& tr_;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> heap_;
  uint64_t seq_ = 0;
  std::vector<SenderState> s_;
  std::vector<std::vector<Lane>> s_lanes_, r_lanes_;  // NICs, then the ipc link
  std::vector<Lane> hosts_;
  std::vector<std::vector<double>>
      cores_;  // per host: when each CPU core is free (CPU projections)
  std::vector<int> s_host_, r_host_;
  std::vector<uint32_t> shards_left_;
  std::vector<double> write_end_, s_last_;
  std::vector<uint32_t> proj_pending_;
  std::vector<double> proj_done_, proj_ready_;
  std::vector<std::vector<uint32_t>> group_of_;  // [phase][rank] -> barrier id
  std::map<std::pair<uint16_t, uint32_t>, std::array<double, 3>> gather_load_;  // in, out, pieces
  std::vector<Barrier> barriers_;
  // Per receiver: per sender, its last immediate and its bytes.
  std::vector<std::map<uint32_t, std::pair<double, uint64_t>>> r_from_;
  std::vector<std::pair<double, int>> r_last_lane_;
  uint64_t shards_ = 0;
};

void Sim::prepare() {
  const size_t S = p_.senders.size(), R = p_.receivers.size();
  std::map<std::string, int> host_ids;
  auto host = [&](const std::string& h) {
    return host_ids.emplace(h, static_cast<int>(host_ids.size())).first->second;
  };
  s_.resize(S);
  for (size_t i = 0; i < S; ++i) {
    const int lanes = std::max(1, p_.senders[i].nics) + 1;
    s_lanes_.emplace_back(lanes);
    s_[i].queues.resize(lanes);
    s_[i].scheduled.assign(lanes, false);
    s_host_.push_back(host(p_.senders[i].host));
    // A fixed spread over [0, skew): rank i of S starts at (i * golden ratio mod 1) x skew.
    const double frac = static_cast<double>((i * 0x9E3779B97F4A7C15ull) >> 11) * 0x1p-53;
    s_[i].start = s_[i].t = f_.start_skew_us * 1e-6 * frac;
    s_[i].st.skew_s = s_[i].start;
  }
  for (size_t j = 0; j < R; ++j) {
    r_lanes_.emplace_back(std::max(1, p_.receivers[j].nics) + 1);
    r_host_.push_back(host(p_.receivers[j].host));
  }
  hosts_.resize(host_ids.size());
  if (!f_.shards_on_gpu && f_.cpu_cores >= 1)
    cores_.assign(host_ids.size(), std::vector<double>(static_cast<size_t>(f_.cpu_cores), 0.0));
  r_from_.resize(R);
  r_last_lane_.assign(R, {0.0, 0});
  shards_left_.assign(p_.writes.size(), 0);
  write_end_.assign(p_.writes.size(), 0);
  s_last_.assign(S, 0);
  proj_pending_.assign(p_.projects.size(), 0);
  proj_done_.assign(p_.projects.size(), 0);
  proj_ready_.assign(p_.projects.size(), 0);
  for (const plan::Write& w : p_.writes)
    if (w.project >= 0) ++proj_pending_[static_cast<size_t>(w.project)];
  // Gather groups per phase, and each rank's load in each phase.
  std::vector<Groups> g(p_.phases);
  for (auto& x : g) {
    x.up.resize(S);
    std::iota(x.up.begin(), x.up.end(), 0u);
  }
  for (const plan::Gather& ga : p_.gathers) {
    int64_t others = 0;
    for (const auto& pc : ga.pieces) {
      if (pc.rank >= S) continue;
      g[ga.phase].up[g[ga.phase].find(pc.rank)] = g[ga.phase].find(ga.root);
      others += pc.rank != ga.root ? pc.box.numel() : 0;
    }
    for (const auto& pc : ga.pieces) {
      if (pc.rank == ga.root || pc.rank >= S || others == 0) continue;
      const double b = static_cast<double>(ga.bytes) * static_cast<double>(pc.box.numel()) /
                       static_cast<double>(others);
      auto& root = gather_load_[{ga.phase, ga.root}];
      root[0] += b;
      root[2] += 1;
      gather_load_[{ga.phase, pc.rank}][1] += b;
    }
  }
  group_of_.assign(p_.phases, std::vector<uint32_t>(S, 0));
  for (uint16_t ph = 0; ph < p_.phases; ++ph) {
    std::map<uint32_t, uint32_t> ids;
    for (uint32_t r = 0; r < S; ++r) {
      const uint32_t c = g[ph].find(r);
      auto [it, fresh] = ids.emplace(c, static_cast<uint32_t>(barriers_.size()));
      if (fresh) barriers_.emplace_back();
      group_of_[ph][r] = it->second;
    }
  }
  // Only ranks with gather tasks in a phase meet in it.
  for (uint32_t r = 0; r < S; ++r) {
    std::set<uint16_t> seen;
    for (const Task& t : p_.senders[r].tasks)
      if (t.op == Task::Op::kGather && seen.insert(p_.gathers[t.index].phase).second)
        ++barriers_[group_of_[p_.gathers[t.index].phase][r]].expected;
  }
  // Direct writes read shards that (GPU shards, a NIC that cannot read them) are mirrored to
  // the host first, in the order the sender first reads them, from its start on.
  const bool mirror = f_.shards_on_gpu && !f_.nic_reads_gpu;
  for (uint32_t r = 0; r < S && mirror; ++r) {
    std::map<int32_t, uint64_t> bytes;
    std::vector<int32_t> order;
    for (const Task& t : p_.senders[r].tasks) {
      if (t.op != Task::Op::kWrite) continue;
      const plan::Write& w = p_.writes[t.index];
      if (w.project != plan::Write::kDirect || ipc_write(w)) continue;
      if (!bytes.count(w.src_param)) order.push_back(w.src_param);
      bytes[w.src_param] += w.len;
    }
    double t = s_[r].start;
    for (int32_t prm : order) {
      const double d = static_cast<double>(bytes[prm]) / f_.d2h_bytes_per_s;
      tr_.span(r, kCopyLane, "mirror shard", t, d);
      t += d;
      s_[r].mirror_ready[prm] = t;
      s_[r].st.staging_s += d;
    }
  }
  // Readiness: three rendezvous requests per sender (its record, every receiver's arm in one
  // many-key request, its record again), each a round trip; one server does every sender's at
  // once, serving them in turn: a sender whose requests cost the server w is through once the
  // server has spent min(w, w_j) on every sender j.
  std::vector<double> work(S), own(S);
  for (uint32_t r = 0; r < S; ++r) {
    std::set<uint32_t> rx;
    for (const Task& t : p_.senders[r].tasks)
      if (t.op == Task::Op::kWrite) rx.insert(p_.dests[p_.writes[t.index].dest].receiver);
    const double keys = static_cast<double>(rx.size()) * f_.ready_key_us;
    work[r] = 3 * f_.ready_server_us + keys;
    own[r] = 3 * f_.ready_rtt_us + keys;
  }
  std::vector<double> sorted = work;
  std::sort(sorted.begin(), sorted.end());
  std::vector<double> prefix(S + 1, 0);
  for (size_t i = 0; i < S; ++i) prefix[i + 1] = prefix[i] + sorted[i];
  for (uint32_t r = 0; r < S; ++r) {
    const size_t below = static_cast<size_t>(
        std::lower_bound(sorted.begin(), sorted.end(), work[r]) - sorted.begin());
    const double served = prefix[below] + static_cast<double>(S - below) * work[r];
    const double d = std::max(own[r], served) * 1e-6;
    s_[r].ready_at = s_[r].start + d;
    s_[r].st.ready_s = d;
    if (d > 0) tr_.span(r, kCopyLane, "readiness (receivers' arms)", s_[r].start, d);
  }
}

void Sim::enqueue(uint32_t s, uint32_t wi, double ready) {
  ready = std::max(ready, s_[s].ready_at);  // no write before the receivers' arms are read
  const plan::Write& w = p_.writes[wi];
  const int nics = std::max(1, p_.senders[s].nics);
  const bool ipc = ipc_write(w);
  const int n = ipc ? 1 : nics;
  shards_left_[wi] = static_cast<uint32_t>(n);
  for (int k = 0; k < n; ++k) {
    const uint64_t lo = w.len * static_cast<uint64_t>(k) / static_cast<uint64_t>(n),
                   hi = w.len * static_cast<uint64_t>(k + 1) / static_cast<uint64_t>(n);
    const uint32_t lane = ipc ? static_cast<uint32_t>(nics) : static_cast<uint32_t>(k);
    s_[s].queues[lane].push_back({wi, hi - lo, ready});
    if (!s_[s].scheduled[lane]) {
      s_[s].scheduled[lane] = true;
      push(std::max(ready, s_lanes_[s][lane].free), 1, s, lane);
    }
  }
}

void Sim::lane_event(uint32_t s, uint32_t lane, double now) {
  SenderState& x = s_[s];
  const Job job = x.queues[lane].front();
  x.queues[lane].pop_front();
  const plan::Write& w = p_.writes[job.write];
  const uint32_t rc = p_.dests[w.dest].receiver;
  const bool ipc = lane == s_lanes_[s].size() - 1;
  const auto b = static_cast<double>(job.bytes);
  Lane& sl = s_lanes_[s][lane];
  const double ts = std::max(now, sl.free);
  const double srate = ipc ? ipc_rate(s) : nic_rate(p_.senders[s].nic_gbps);
  const double sdur = (ipc ? 0 : f_.write_us * 1e-6) + b / srate;
  sl.free = ts + sdur;
  sl.busy += sdur;
  tr_.nic(s, lane, ts, sdur);
  // The receiver's side: its NIC for this shard (shard k of the stripe) or its ipc link.
  const auto rlanes = static_cast<uint32_t>(r_lanes_[rc].size());
  const uint32_t rl_i = ipc ? rlanes - 1 : lane % (rlanes - 1);
  Lane& rl = r_lanes_[rc][rl_i];
  const double rrate = ipc ? ipc_rate(s) : nic_rate(p_.receivers[rc].nic_gbps);
  const double rstart = std::max(ts, rl.free);
  rl.free = rstart + b / rrate;
  rl.busy += b / rrate;
  double end = std::max(sl.free, rl.free);
  if ((f_.host_bytes_per_s > 0 || f_.host_write_us > 0) && !ipc)
    for (int h : {s_host_[s], r_host_[rc]}) {
      const double hd =
          f_.host_write_us * 1e-6 + (f_.host_bytes_per_s > 0 ? b / f_.host_bytes_per_s : 0);
      if (f_.host_path_on_cores && !cores_.empty()) {
        // The host path is its CPU cores (loopback): the copy takes one core for cores x its
        // share of the path, beside the CPU projections.
        auto& cs = cores_[static_cast<size_t>(h)];
        const size_t c = static_cast<size_t>(std::min_element(cs.begin(), cs.end()) - cs.begin());
        cs[c] = std::max(ts, cs[c]) + hd * static_cast<double>(cs.size());
        end = std::max(end, cs[c]);
      } else {
        Lane& hl = hosts_[static_cast<size_t>(h)];
        hl.free = std::max(ts, hl.free) + hd;
        end = std::max(end, hl.free);
      }
      if (s_host_[s] == r_host_[rc]) break;
    }
  end += f_.latency_us * 1e-6;
  ++shards_;
  write_end_[job.write] = std::max(write_end_[job.write], end);
  if (end >= r_last_lane_[rc].first) r_last_lane_[rc] = {end, ipc ? -1 : static_cast<int>(lane)};
  if (--shards_left_[job.write] == 0) write_done(job.write, write_end_[job.write]);
  if (x.queues[lane].empty()) {
    x.scheduled[lane] = false;
  } else {
    push(std::max(sl.free, x.queues[lane].front().ready), 1, s, lane);
  }
}

void Sim::write_done(uint32_t wi, double t) {
  const plan::Write& w = p_.writes[wi];
  const uint32_t rc = p_.dests[w.dest].receiver;
  s_last_[w.sender] = std::max(s_last_[w.sender], t);
  auto& from = r_from_[rc][w.sender];
  from.first = std::max(from.first, t);
  from.second += w.len;
  if (w.project < 0) return;
  const auto pj = static_cast<size_t>(w.project);
  proj_done_[pj] = std::max(proj_done_[pj], t);
  SenderState& x = s_[w.sender];
  if (--proj_pending_[pj] == 0 && x.blocked_on == w.project) {
    x.blocked_on = -1;
    if (proj_done_[pj] > x.t) {  // the projection waiting for this slot waited until now
      tr_.span(w.sender, kComputeLane, "ring wait", x.t, proj_done_[pj] - x.t);
      x.st.ring_wait_s += proj_done_[pj] - x.t;
      x.t = proj_done_[pj];
    }
    push(x.t, 0, w.sender, 0);
  }
}

void Sim::gather_arrive(uint32_t s, double now) {
  const uint16_t ph = p_.gathers[p_.senders[s].tasks[s_[s].ti].index].phase;
  Barrier& b = barriers_[group_of_[ph][s]];
  b.arrived.push_back({s, now});
  s_[s].at_barrier = true;
  if (b.arrived.size() < b.expected) return;
  double meet = 0;
  for (const auto& [r, t] : b.arrived) meet = std::max(meet, t);
  // Pieces ride NVLink on NCCL or an ipc link; else the rank's NICs, all of them at once.
  const bool nvlink = p_.options.nccl_gathers || p_.options.ipc_links || p_.options.hybrid_links;
  const double piece_us = f_.gather_piece_us >= 0 ? f_.gather_piece_us : o_.topology_gather_us;
  for (const auto& [r, t] : b.arrived) {
    SenderState& x = s_[r];
    const double rate =
        nvlink ? ipc_rate(r) : nic_rate(p_.senders[r].nic_gbps) * std::max(1, p_.senders[r].nics);
    auto it = gather_load_.find({ph, r});
    double d = 0;
    if (it != gather_load_.end())
      d = std::max(it->second[0], it->second[1]) / rate + it->second[2] * piece_us * 1e-6;
    const double end = meet + d;
    tr_.span(r, kComputeLane, fmt::format("gathers, phase {}", ph), t, end - t);
    x.st.gather_s += end - t;
    x.t = end;
    x.at_barrier = false;
    // Past this phase's gather tasks.
    const auto& tasks = p_.senders[r].tasks;
    while (x.ti < tasks.size() && tasks[x.ti].op == Task::Op::kGather &&
           p_.gathers[tasks[x.ti].index].phase == ph)
      ++x.ti;
    push(x.t, 0, r, 0);
  }
  b.arrived.clear();
}

Status Sim::compute(uint32_t s, double now) {
  SenderState& x = s_[s];
  x.t = std::max(x.t, now);
  const auto& tasks = p_.senders[s].tasks;
  while (x.ti < tasks.size()) {
    const Task& task = tasks[x.ti];
    if (task.op == Task::Op::kWrite) {
      const plan::Write& w = p_.writes[task.index];
      double ready = x.t;
      if (w.project >= 0) {
        ready = proj_ready_[static_cast<size_t>(w.project)];
      } else if (auto m = x.mirror_ready.find(w.src_param); m != x.mirror_ready.end()) {
        ready = std::max(ready, m->second);
      }
      enqueue(s, task.index, ready);
      ++x.ti;
      continue;
    }
    if (task.op == Task::Op::kGather) {
      gather_arrive(s, x.t);
      return Status::ok();
    }
    // A projection: first the staging slot, freed once the writes reading it completed.
    const plan::Project& q = p_.projects[task.index];
    const auto range = slot(q);
    const uint64_t lo = range.first, hi = range.second;
    auto overlaps = [&] {
      for (uint32_t f : x.inflight) {
        const auto [olo, ohi] = slot(p_.projects[f]);
        if (olo < hi && lo < ohi) return true;
      }
      return false;
    };
    while (!x.inflight.empty() && overlaps()) {
      const uint32_t f = x.inflight.front();
      if (proj_pending_[f] > 0) {
        x.blocked_on = static_cast<int32_t>(f);
        return Status::ok();
      }
      if (proj_done_[f] > x.t) {
        tr_.span(s, kComputeLane, "ring wait", x.t, proj_done_[f] - x.t);
        x.st.ring_wait_s += proj_done_[f] - x.t;
        x.t = proj_done_[f];
      }
      x.inflight.pop_front();
    }
    // What the projection reads: its box's elements at the source dtype's size.
    const double in = static_cast<double>(q.box.numel()) * o_.source_bytes_per_elem;
    const double out = static_cast<double>(hi - lo);
    const double d = f_.project_us * 1e-6 + (in + out) / f_.project_bytes_per_s;
    const double begin = x.t;
    if (!cores_.empty()) {  // a CPU core of its host: the one freed last before now, else the first
      auto& cs = cores_[static_cast<size_t>(s_host_[s])];
      size_t c = 0;
      for (size_t i = 1; i < cs.size(); ++i) {
        const bool fits = cs[i] <= x.t, best = cs[c] <= x.t;
        if ((fits && (!best || cs[i] > cs[c])) || (!fits && !best && cs[i] < cs[c])) c = i;
      }
      x.t = std::max(x.t, cs[c]);
      cs[c] = x.t + d;
    }
    tr_.span(s, kComputeLane, "projection", x.t, d);
    x.t += d;
    x.st.project_s += x.t - begin;  // (with waiting for a core)
    double ready = x.t;
    if (f_.shards_on_gpu && !f_.nic_reads_gpu && !p_.options.ipc_links) {
      const double c0 = std::max(x.t, x.copy_free), cd = out / f_.d2h_bytes_per_s;
      tr_.span(s, kCopyLane, "staging copy", c0, cd);
      x.copy_free = ready = c0 + cd;
      x.st.staging_s += cd;
    }
    proj_ready_[task.index] = ready;
    if (proj_pending_[task.index] == 0) proj_done_[task.index] = ready;
    x.inflight.push_back(task.index);
    ++x.ti;
    push(x.t, 0, s, 0);  // the next task after the time this one took
    return Status::ok();
  }
  x.done = true;
  x.compute_end = x.t;
  return Status::ok();
}

Result<Simulation> Sim::run() {
  prepare();
  for (uint32_t s = 0; s < s_.size(); ++s) push(s_[s].start, 0, s, 0);
  while (!heap_.empty()) {
    const Event e = heap_.top();
    heap_.pop();
    if (e.kind == 1) {
      lane_event(e.sender, e.lane, e.t);
    } else if (!s_[e.sender].done && s_[e.sender].blocked_on < 0 && !s_[e.sender].at_barrier) {
      if (Status st = compute(e.sender, e.t); !st) return st;
    }
  }
  for (uint32_t s = 0; s < s_.size(); ++s)
    if (!s_[s].done)
      return Status(Code::kInternal,
                    fmt::format("simulation stalled: trainer rank {} at task {} of {}{}", s,
                                s_[s].ti, p_.senders[s].tasks.size(),
                                s_[s].at_barrier ? " (waiting for its gather group)" : ""));
  Simulation out;
  out.writes = p_.writes.size();
  out.shards = shards_;
  for (size_t s = 0; s < s_.size(); ++s)
    out.sender_done_s.push_back(std::max(s_[s].compute_end, s_last_[s]));
  const bool staged = f_.tensors_on_gpu && !f_.nic_writes_gpu;
  for (size_t r = 0; r < p_.receivers.size(); ++r) {
    // Staged tensors: each sender's bytes are copied in once its immediates are all in.
    std::vector<std::pair<double, uint32_t>> order;
    for (const auto& [s, v] : r_from_[r]) order.push_back({v.first, s});
    std::sort(order.begin(), order.end());
    double end = 0, copy = 0;
    uint32_t last = order.empty() ? 0 : order.back().second;
    for (const auto& [t, s] : order) {
      end = std::max(end, t);
      if (staged && !ipc_pair(s, static_cast<uint32_t>(r))) {
        const double d = static_cast<double>(r_from_[r].at(s).second) / f_.h2d_bytes_per_s;
        copy = std::max(copy, t) + d;
        tr_.span_receiver(static_cast<uint32_t>(r), "staging copy in", copy - d, d);
        if (copy >= end) last = s;
        end = std::max(end, copy);
      }
    }
    out.receiver_done_s.push_back(end);
    // The receiver's busiest ingress link: its floor, and how busy the slowest path kept it.
    double busy = 0;
    for (const Lane& l : r_lanes_[r]) busy = std::max(busy, l.busy);
    out.floor_s = std::max(out.floor_s, busy);
    if (end >= out.predicted_s) {
      out.predicted_s = end;
      out.receiver = static_cast<uint32_t>(r);
      out.sender = last;
      out.nic = r_last_lane_[r].second;
      out.receiver_busy_s = busy;
    }
  }
  if (!s_.empty() && !p_.receivers.empty()) {
    const SenderState& x = s_[out.sender];
    out.stages = x.st;
    for (const Lane& l : s_lanes_[out.sender])
      out.sender_busy_s = std::max(out.sender_busy_s, l.busy);
    const auto it = r_from_[out.receiver].find(out.sender);
    const double last = it == r_from_[out.receiver].end() ? x.compute_end : it->second.first;
    out.stages.writes_s = std::max(0.0, last - x.compute_end);
    out.receiver_tail_s = std::max(0.0, out.predicted_s - std::max(last, x.compute_end));
  }
  return out;
}
}  // namespace

Result<Simulation> simulate(const Plan& plan, const Profile& profile, const Options& opts) {
  if (Status s = profile.check(); !s) return s;
  Tracer tr(opts.trace_path, opts.max_events, plan);
  Sim sim(plan, profile, opts, tr);
  auto r = sim.run();
  if (!r) return r;
  if (Status s = tr.write(); !s) return s;
  return r;
}

}  // namespace weightcast::sim
