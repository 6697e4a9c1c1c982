// The host collective: gathers over one-sided writes between local processes.
#include "weightcast/exec/collective.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "weightcast/exec/nccl_collective.h"
#include "weightcast/session/keys.h"

namespace weightcast::exec {

uint64_t HostCollective::box_bytes(const plan::Gather& g) const {
  return static_cast<uint64_t>(g.box.numel()) * core::dtype_size(in_.trainer.params[g.param].dtype);
}

Result<std::unique_ptr<HostCollective>> HostCollective::create(
    const spec::Inputs& in, const plan::Plan& plan, uint32_t rank,
    transport::ProgressEngine* engine, transport::ImmCounters* counters,
    transport::RendezvousClient* rdv, ShardLookup shards, MemoryKind memory, int device) {
  std::unique_ptr<HostCollective> c(new HostCollective(in, plan));
  c->memory_ = memory;
  c->rank_ = rank;
  c->engine_ = engine;
  c->counters_ = counters;
  c->rdv_ = rdv;
  c->shards_ = std::move(shards);
  // Every root lays out its gather buffer the same way: kWindow slots, each the size of the
  // root's largest phase, and the root's k-th phase (in phase order, counting only phases where
  // it is a root) in slot k % kWindow. A member writes a phase only once the root opened its slot
  // (open() and release()), so it never overwrites boxes the root still projects from.
  std::map<uint32_t, std::map<uint16_t, uint64_t>> phase_bytes;  // root -> phase -> bytes
  c->offset_.resize(plan.gathers.size());
  for (uint32_t g = 0; g < plan.gathers.size(); ++g) {
    const plan::Gather& x = plan.gathers[g];
    c->offset_[g] = phase_bytes[x.root][x.phase];  // within its phase, for now
    phase_bytes[x.root][x.phase] += c->box_bytes(x);
  }
  std::map<uint32_t, uint64_t> slot;    // root -> slot bytes
  std::map<uint32_t, uint16_t> rooted;  // root -> phases it roots
  for (const auto& [root, phases] : phase_bytes) {
    uint16_t k = 0;
    for (const auto& [ph, bytes] : phases) {
      slot[root] = std::max(slot[root], bytes);
      c->local_phase_[{root, ph}] = k++;
    }
    rooted[root] = k;
  }
  for (uint32_t g = 0; g < plan.gathers.size(); ++g) {
    const plan::Gather& x = plan.gathers[g];
    c->offset_[g] += (c->local_phase_.at({x.root, x.phase}) % kWindow) * slot[x.root];
  }
  const uint64_t slots = std::min<uint64_t>(kWindow, rooted[rank]);
  auto gbuf = Buffer::allocate(memory, std::max<uint64_t>(slots * slot[rank], 1), device);
  if (!gbuf) return gbuf.status();
  c->gbuf_ = std::move(gbuf).value();
  // Packing space: a ring that holds at least two phases' pieces (one in flight while the next
  // is packed), and every phase's when they fit in kPackAhead.
  c->pack_bytes_.assign(plan.phases, 0);
  c->member_of_.resize(plan.phases);
  c->sent_.assign(plan.phases, -1);
  for (uint32_t g = 0; g < plan.gathers.size(); ++g) {
    const plan::Gather& x = plan.gathers[g];
    if (x.root == rank || x.phase >= plan.phases) continue;
    bool member = false;
    for (const auto& p : x.pieces)
      if (p.rank == rank) {
        member = true;
        c->pack_bytes_[x.phase] += static_cast<uint64_t>(p.box.numel()) *
                                   core::dtype_size(in.trainer.params[x.param].dtype);
      }
    if (member) c->member_of_[x.phase].push_back(g);
  }
  uint64_t most = 1, total = 0;
  for (uint64_t b : c->pack_bytes_) {
    most = std::max(most, b);
    total += b;
  }
  auto packing = Buffer::allocate(memory, std::max(2 * most, std::min(total, kPackAhead)), device);
  if (!packing) return packing.status();
  c->pack_ = std::move(packing).value();
  const auto kind =
      memory == MemoryKind::kCuda ? transport::MemKind::kCuda : transport::MemKind::kHost;
  auto g = engine->register_memory(c->gbuf_.data(), c->gbuf_.size(), kind);
  if (!g) return g.status();
  c->gbuf_region_ = *g;
  auto p = engine->register_memory(c->pack_.data(), c->pack_.size(), kind);
  if (!p) return p.status();
  c->pack_region_ = *p;
  c->both_ends_ = engine->caps().connect_both_ends;
  if (memory == MemoryKind::kCuda) {  // marks on the pushing thread's stream (release())
    auto m = CopyQueue::create(device, kWindow, false);
    if (!m) return m.status();
    c->marks_ = std::move(m).value();
  }
  return c;
}

Status HostCollective::copy(std::byte* dst, const std::byte* src, uint64_t n) {
  if (memory_ == MemoryKind::kCuda) return copy_device_to_device_async(dst, src, n);
  std::memcpy(dst, src, n);
  return Status::ok();
}

Status HostCollective::link(const char* role, uint32_t r, uint32_t incarnation,
                            Clock::time_point deadline, std::map<uint32_t, Link>& into) {
  auto addr = rdv_->get(session::keys::sender_address(r, incarnation), deadline);
  if (!addr)
    return Status(addr.status().code(),
                  fmt::format("gather {} {}: {}", role, r, addr.status().message()));
  auto peer = engine_->connect(*addr);
  if (!peer) return peer.status();
  auto desc = rdv_->get(session::keys::gather_buffer(r, incarnation), deadline);
  if (!desc) return desc.status();
  auto region = transport::RemoteRegion::parse(*desc);
  if (!region) return region.status();
  if (region->per_nic.size() != engine_->nics())
    return invalid("gather {} {} published its buffer with {} NIC key(s); this job has {}", role, r,
                   region->per_nic.size(), engine_->nics());
  const Link& l = into[r] = Link{*peer, *region, incarnation};
  if (both_ends_) return Status::ok();  // connected already; nothing to warm up
  // Warm the connection up (the first write to a peer pays for its set-up).
  return engine_->wait(engine_->submit({{&pack_region_, 0, l.peer, &l.gbuf, 0, 0, false, 0}}),
                       deadline);
}

Status HostCollective::publish() {
  return rdv_->put(session::keys::gather_buffer(rank_, incarnation_),
                   transport::NicGroup::remote(gbuf_region_).serialize());
}

Status HostCollective::prepare(Clock::time_point deadline, std::span<const uint32_t> incarnations) {
  if (Status s = publish(); !s) return s;
  auto inc = [&](uint32_t r) { return r < incarnations.size() ? incarnations[r] : 0u; };
  std::set<uint32_t> roots;
  for (const plan::Gather& x : plan_.gathers)
    for (const auto& p : x.pieces)
      if (p.rank == rank_ && x.root != rank_) roots.insert(x.root);
  for (uint32_t r : roots)
    if (Status s = link("root", r, inc(r), deadline, roots_); !s) return s;
  std::set<uint32_t> members;
  for (const plan::Gather& x : plan_.gathers)
    if (x.root == rank_)
      for (const auto& p : x.pieces)
        if (p.rank != rank_) members.insert(p.rank);
  for (uint32_t m : members)
    if (Status s = link("member", m, inc(m), deadline, members_); !s) return s;
  return Status::ok();
}

Status HostCollective::open(uint8_t gen, Clock::time_point deadline) {
  // A new step: nothing of it was sent yet. Pieces of an aborted step may still be in flight from
  // the packing buffer; they finish (their error was reported with that step) before it is reused.
  std::fill(sent_.begin(), sent_.end(), -1);
  for (const Packed& r : packed_) (void)engine_->wait(r.batch, deadline);
  packed_.clear();
  for (uint64_t b : std::exchange(open_batches_, {})) (void)engine_->wait(b, deadline);
  opens_sent_ = 0;
  return send_open(gen);
}

// One "open" to every member: the next slot of this root's gather buffer may be written.
Status HostCollective::send_open(uint8_t gen) {
  std::vector<transport::GroupWrite> w;
  const uint32_t imm =
      transport::Imm{gen, transport::Imm::kGatherOpenPhase, static_cast<uint16_t>(rank_)}.encode();
  for (const auto& [m, x] : members_)
    w.push_back({&pack_region_, 0, x.peer, &x.gbuf, 0, 0, true, imm});
  ++opens_sent_;
  if (w.empty()) return Status::ok();
  // Not waited for here (a round trip per slot): finish() collects them.
  open_batches_.push_back(engine_->submit(std::move(w)));
  return Status::ok();
}

// The root reached its local phase k. On the host every earlier phase's boxes are no longer
// read (the projections ran), so phases up to k - 1 + kWindow may be written. On the GPU the
// projections are queued, not done: the stream is marked here, and the phases before k - 1 are
// freed once the mark made when phase k - 1 began is reached (usually long done), so the GPU
// keeps its queue.
Status HostCollective::release(uint8_t gen, uint16_t k) {
  if (members_.empty()) return Status::ok();
  uint32_t opens = 1u + k;
  if (memory_ == MemoryKind::kCuda) {
    auto named = [&](const Status& s) {
      return Status(s.code(), fmt::format("gather root {}: {}", rank_, s.message()));
    };
    if (Status s = marks_.mark(k % kWindow); !s) return named(s);
    if (k == 0) return Status::ok();
    opens = k;
    if (opens_sent_ >= opens) return Status::ok();
    if (Status s = marks_.wait((k - 1) % kWindow); !s) return named(s);
  }
  while (opens_sent_ < opens)
    if (Status s = send_open(gen); !s) return s;
  return Status::ok();
}

Status HostCollective::rejoin(uint32_t trainer, uint32_t incarnation, Clock::time_point deadline) {
  auto m = members_.find(trainer);
  if (m != members_.end() && m->second.incarnation != incarnation)
    if (Status s = link("member", trainer, incarnation, deadline, members_); !s) return s;
  auto it = roots_.find(trainer);
  if (it == roots_.end() || it->second.incarnation == incarnation) return Status::ok();
  opened_.erase(trainer);
  return link("root", trainer, incarnation, deadline, roots_);
}

Result<std::pair<core::Box, const std::byte*>> HostCollective::held_piece(
    uint32_t gi, const core::Box& piece) const {
  const plan::Gather& g = plan_.gathers[gi];
  auto found = shards_(g.param);
  if (!found) return found.status();
  if (!found->second || !found->first.contains(piece))
    return invalid("gather {}: rank {} does not hold its piece {} of '{}'", gi, rank_, piece.str(),
                   in_.trainer.params[g.param].name);
  return found;
}

bool HostCollective::opened(uint8_t gen, uint32_t root, uint16_t phase,
                            Clock::time_point deadline) {
  const uint16_t k = local_phase_.at({root, phase});
  const uint32_t need = 1u + (k >= kWindow ? k - kWindow + 1 : 0);  // opens that cover slot k
  auto& [g, have] = opened_[root];
  if (g != gen) {
    g = gen;
    have = 0;
  }
  const uint64_t nics = engine_->nics();
  while (have < need) {
    if (!counters_->wait(
            gen, {{transport::Imm::kGatherOpenPhase, static_cast<uint16_t>(root), nics}}, deadline))
      return false;
    ++have;
  }
  return true;
}

Result<bool> HostCollective::send(uint8_t gen, uint16_t phase, bool ahead,
                                  Clock::time_point deadline) {
  const std::vector<uint32_t>& mine = member_of_[phase];
  if (mine.empty() || sent_[phase] == gen) return true;
  if (ahead)  // never block on a root that is not ready: run(phase) sends these later then
    for (uint32_t gi : mine)
      if (!opened(gen, plan_.gathers[gi].root, phase, Clock::now())) return false;
  // Each piece goes out straight from the registered shard where its runs in the shard are its
  // runs in the root's box (a root counts one immediate per run); the others are packed.
  struct Piece {
    uint32_t gather;
    core::Box box, held;
    const std::byte* data;
    std::vector<std::pair<int64_t, int64_t>> src, dst;  // runs (element offset, length)
    std::optional<std::pair<const transport::Region*, uint64_t>> direct;
  };
  std::vector<Piece> pieces;
  uint64_t need = 0;  // bytes to pack
  for (uint32_t gi : mine) {
    const plan::Gather& g = plan_.gathers[gi];
    const size_t esz = core::dtype_size(in_.trainer.params[g.param].dtype);
    for (const auto& piece : g.pieces) {
      if (piece.rank != rank_) continue;
      auto found = held_piece(gi, piece.box);
      if (!found) return found.status();
      Piece pc{gi, piece.box, found->first, found->second, {}, {}, std::nullopt};
      core::for_each_run(pc.held.extents(), core::relative(piece.box, pc.held),
                         [&](int64_t off, int64_t len) {
                           pc.src.push_back({off, len});
                         });
      core::for_each_run(g.box.extents(), core::relative(piece.box, g.box),
                         [&](int64_t off, int64_t len) {
                           pc.dst.push_back({off, len});
                         });
      bool same = sources_ && pc.src.size() == pc.dst.size();
      for (size_t k = 0; same && k < pc.src.size(); ++k)
        same = pc.src[k].second == pc.dst[k].second;
      if (same) pc.direct = sources_(g.param);
      if (!pc.direct) need += static_cast<uint64_t>(piece.box.numel()) * esz;
      pieces.push_back(std::move(pc));
    }
  }
  // The ring range for the packed pieces: after the last one, or from the start when it does
  // not fit; older ranges it overlaps must have been written out first.
  const uint64_t lo = pack_head_ + need <= pack_.size() ? pack_head_ : 0, hi = lo + need;
  while (!packed_.empty() && need > 0) {
    bool overlap = false;
    for (const Packed& r : packed_) overlap = overlap || (r.lo < hi && lo < r.hi);
    if (!overlap) break;
    const Packed oldest = packed_.front();
    Status s;
    if (!ahead)
      s = engine_->wait(oldest.batch, deadline);
    else if (!engine_->probe(oldest.batch, s))
      return false;  // still in flight: no room yet (and the batch is still waited for later)
    packed_.pop_front();
    if (!s) return Status(s.code(), fmt::format("gather member {}: {}", rank_, s.message()));
  }
  std::vector<transport::GroupWrite> writes;
  uint64_t packed = lo;
  const uint32_t imm =
      transport::Imm{gen, static_cast<uint8_t>(phase), static_cast<uint16_t>(rank_)}.encode();
  for (const Piece& pc : pieces) {
    const plan::Gather& g = plan_.gathers[pc.gather];
    const size_t esz = core::dtype_size(in_.trainer.params[g.param].dtype);
    // The root must have opened its buffer's slot for this generation (it may still be
    // projecting earlier boxes from it).
    if (!opened(gen, g.root, phase, deadline))
      return Status(Code::kTimeout,
                    fmt::format("gather member {}: root {} never opened its buffer for generation "
                                "{} (phase {})",
                                rank_, g.root, gen, phase));
    const Link& root = roots_.at(g.root);
    if (pc.direct) {
      for (size_t k = 0; k < pc.dst.size(); ++k)
        writes.push_back({pc.direct->first, pc.direct->second + pc.src[k].first * esz, root.peer,
                          &root.gbuf, offset_[pc.gather] + pc.dst[k].first * esz,
                          static_cast<uint64_t>(pc.dst[k].second) * esz, true, imm});
      continue;
    }
    // Packed row-major (its runs inside the shard, in order), then one write per run of the
    // piece inside the root's box, each with the immediate.
    uint64_t from = packed;
    for (const auto& [off, len] : pc.src) {
      const uint64_t n = static_cast<uint64_t>(len) * esz;
      if (Status cs = copy(pack_.data() + packed, pc.data + off * esz, n); !cs)
        return Status(cs.code(), fmt::format("gather member {}: {}", rank_, cs.message()));
      packed += n;
    }
    for (const auto& [off, len] : pc.dst) {
      writes.push_back({&pack_region_, from, root.peer, &root.gbuf, offset_[pc.gather] + off * esz,
                        static_cast<uint64_t>(len) * esz, true, imm});
      from += static_cast<uint64_t>(len) * esz;
    }
  }
  if (memory_ == MemoryKind::kCuda && packed > lo)  // packed before the writes read it
    if (Status cs = cuda_sync(); !cs)
      return Status(cs.code(), fmt::format("gather member {}: {}", rank_, cs.message()));
  sent_[phase] = gen;
  if (need > 0) pack_head_ = hi;
  if (!writes.empty()) packed_.push_back({lo, hi, engine_->submit(std::move(writes))});
  return true;
}

Status HostCollective::run(uint8_t gen, uint16_t phase, std::span<const uint32_t> gathers,
                           Clock::time_point deadline) {
  if (phase >= member_of_.size())
    return invalid("gather phase {} is not in the plan ({} phases)", phase, member_of_.size());
  const uint64_t nics = engine_->nics();
  // As this phase's root: the slots of its earlier phases are free again.
  if (auto k = local_phase_.find({rank_, phase}); k != local_phase_.end())
    if (Status s = release(gen, k->second); !s) return s;
  // What others wait for first: as a member, this phase's pieces (unless they went ahead), then
  // later phases', ahead, in order, for as long as their roots have opened and the ring has room.
  // Then, as a root, its own pieces into place, and the wait for the members'.
  if (auto s = send(gen, phase, false, deadline); !s) return s.status();
  if (Status s = pump(gen, deadline); !s) return s;
  std::map<uint16_t, uint64_t> expect;  // member -> imms this root waits for
  for (uint32_t gi : gathers) {
    const plan::Gather& g = plan_.gathers[gi];
    if (g.phase != phase) return invalid("gather {} is in phase {}, not {}", gi, g.phase, phase);
    if (g.root != rank_) continue;
    const size_t esz = core::dtype_size(in_.trainer.params[g.param].dtype);
    const core::Shape gs = g.box.extents();
    for (const auto& piece : g.pieces) {
      const core::Box rel = core::relative(piece.box, g.box);
      if (piece.rank != rank_) {
        expect[static_cast<uint16_t>(piece.rank)] += core::count_runs(gs, rel) * nics;
        continue;
      }
      // The root's own piece: copied run by run into place (on the GPU ordered before the
      // projections on this thread's stream).
      auto found = held_piece(gi, piece.box);
      if (!found) return found.status();
      const Status cs = copy_piece(
          piece.box, found->first, found->second, g.box, gbuf_.data() + offset_[gi], esz,
          [this](std::byte* d, const std::byte* src, uint64_t n) { return copy(d, src, n); });
      if (!cs) return Status(cs.code(), fmt::format("gather root {}: {}", rank_, cs.message()));
    }
  }
  if (expect.empty()) return Status::ok();
  std::vector<transport::Expect> e;
  for (const auto& [m, n] : expect) e.push_back({static_cast<uint8_t>(phase), m, n});
  if (Status s = counters_->wait(gen, e, deadline); !s)
    return Status(s.code(),
                  fmt::format("gathers of phase {} at root {}: {}", phase, rank_, s.message()));
  return Status::ok();
}

Status HostCollective::pump(uint8_t gen, Clock::time_point deadline) {
  for (size_t q = 0; q < member_of_.size(); ++q) {
    auto s = send(gen, static_cast<uint16_t>(q), true, deadline);
    if (!s) return s.status();
    if (!*s) break;  // phases go in order: the rest waits for this one
  }
  return Status::ok();
}

Status HostCollective::finish(Clock::time_point deadline) {
  Status first;
  for (const Packed& r : packed_)
    if (Status s = engine_->wait(r.batch, deadline); !s && first.is_ok())
      first = Status(s.code(), fmt::format("gather member {}: {}", rank_, s.message()));
  packed_.clear();
  // Opens are permissions, not data: one that failed (a member died during the step) loses
  // nothing, and a member whose pieces did not come fails this root's wait naming it.
  for (uint64_t b : std::exchange(open_batches_, {})) (void)engine_->wait(b, deadline);
  return first;
}

const std::byte* HostCollective::gathered(uint32_t gather) const {
  if (gather >= plan_.gathers.size() || plan_.gathers[gather].root != rank_) return nullptr;
  return gbuf_.data() + offset_[gather];
}

}  // namespace weightcast::exec
