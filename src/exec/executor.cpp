// Host executor and receiver.
#include "weightcast/exec/executor.h"

#include <fmt/format.h>

#include <set>

#include "weightcast/plan/project.h"

namespace weightcast::exec {

using transport::GroupWrite;
using transport::Imm;

namespace {
std::string key(const char* what, uint32_t id) { return fmt::format("{}/{}", what, id); }
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

Result<std::unique_ptr<TrainerExecutor>> TrainerExecutor::create(const spec::Inputs& in, const plan::Plan& plan,
                                                                 uint32_t rank,
                                                                 const std::vector<transport::DomainConfig>& nics,
                                                                 transport::RendezvousClient* rdv) {
  if (rank >= plan.senders.size()) return invalid("trainer rank {} is not in the plan ({} senders)", rank, plan.senders.size());
  for (const plan::Task& t : plan.senders[rank].tasks)
    if (t.op == plan::Task::Op::kGather)
      return invalid("trainer rank {}: the plan has gathers, which the host executor does not run yet (plan "
                     "with --write-cost-us 0 and block-aligned shards, or use the GPU executor)", rank);
  std::unique_ptr<TrainerExecutor> e(new TrainerExecutor(in, plan));
  e->rank_ = rank;
  e->rdv_ = rdv;
  e->layout_ = sender_layout(in, rank);
  e->arena_.resize(std::max<uint64_t>(e->layout_.bytes, 1));
  const plan::Sender& s = plan.senders[rank];
  e->staging_.resize(std::max<uint64_t>(s.staging_gather + s.staging_ring, 1));
  auto eng = transport::ProgressEngine::start(nics, &e->counters_);
  if (!eng) return eng.status();
  e->engine_ = std::move(eng).value();
  auto a = e->engine_->register_memory(e->arena_.data(), e->arena_.size(), transport::MemKind::kHost);
  if (!a) return a.status();
  e->arena_region_ = *a;
  auto st = e->engine_->register_memory(e->staging_.data(), e->staging_.size(), transport::MemKind::kHost);
  if (!st) return st.status();
  e->staging_region_ = *st;
  return e;
}

std::byte* TrainerExecutor::shard(int param) {
  auto it = layout_.by_param.find(param);
  return it == layout_.by_param.end() ? nullptr : arena_.data() + layout_.shards[it->second].offset;
}

Status TrainerExecutor::prepare(Clock::time_point deadline) {
  if (Status s = rdv_->put(key("send", rank_), engine_->address()); !s) return s;
  std::set<uint32_t> recvs;
  for (const plan::Write& w : plan_.writes)
    if (w.sender == rank_) recvs.insert(plan_.dests[w.dest].receiver);
  for (uint32_t r : recvs) {
    auto addr = rdv_->get(key("recv", r), deadline);
    if (!addr) return Status(addr.status().code(), fmt::format("receiver {}: {}", r, addr.status().message()));
    auto peer = engine_->connect(*addr);
    if (!peer) return peer.status();
    auto desc = rdv_->get(key("region", r), deadline);
    if (!desc) return desc.status();
    auto region = transport::RemoteRegion::parse(*desc);
    if (!region) return region.status();
    Target t{*peer, *region, receiver_layout(plan_, r)};
    if (region->len < t.layout.bytes)
      return invalid("receiver {} registered {} bytes, the plan needs {}", r, region->len, t.layout.bytes);
    receivers_[r] = std::move(t);
  }
  // Warm every connection up (the first write to a peer pays for connection set-up).
  std::vector<GroupWrite> warm;
  for (auto& [r, t] : receivers_) warm.push_back({&arena_region_, 0, t.peer, &t.region, 0, 0, false, 0});
  return engine_->wait(engine_->submit(warm), deadline);
}

Result<StepReport> TrainerExecutor::push(uint8_t gen, Clock::time_point deadline, uint64_t max_writes) {
  const auto t0 = Clock::now();
  StepReport rep;
  rep.step = gen;
  const uint64_t step = gen;
  // Staging ranges still being read by in-flight writes.
  struct Inflight {
    uint64_t lo, hi, batch;
  };
  std::deque<Inflight> inflight;
  std::vector<uint64_t> batches;
  std::vector<GroupWrite> pending;
  uint64_t pend_lo = 0, pend_hi = 0;
  auto flush = [&] {
    if (pending.empty()) return;
    const uint64_t b = engine_->submit(std::move(pending));
    pending.clear();
    batches.push_back(b);
    if (pend_hi > pend_lo) inflight.push_back({pend_lo, pend_hi, b});
    pend_lo = pend_hi = 0;
  };
  for (const plan::Task& t : plan_.senders[rank_].tasks) {
    if (rep.writes >= max_writes) break;
    if (t.op == plan::Task::Op::kProject) {
      flush();
      const plan::Project& p = plan_.projects[t.index];
      const uint64_t lo = p.staging_off, hi = p.scale_dest >= 0 ? p.scale_off + p.scale_box.numel() * 4 : p.staging_off + p.out_bytes;
      // Ring admission: wait for writes still reading this slot.
      while (!inflight.empty()) {
        bool overlap = false;
        for (const Inflight& f : inflight) overlap = overlap || (f.lo < hi && lo < f.hi);
        if (!overlap) break;
        const Inflight f = inflight.front();
        inflight.pop_front();
        if (Status s = engine_->wait(f.batch, deadline); !s) return s;
      }
      const auto& dp = in_.inference.params[plan_.dests[p.dest].param];
      auto res = [&](const plan::Project::Input& inp) -> plan::Held {
        const int src = dp.parts.at(inp.part).src;
        auto it = layout_.by_param.find(src);
        if (it == layout_.by_param.end()) return {};
        const ShardSlot& s = layout_.shards[it->second];
        return {s.box, arena_.data() + s.offset};
      };
      const auto tp = Clock::now();
      if (Status s = plan::project_cpu(in_, plan_, p, res, staging_.data(), staging_.size()); !s)
        return Status(s.code(), fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
      rep.project_s += since(tp);
      ++rep.projects;
      pend_lo = lo;
      pend_hi = hi;
      continue;
    }
    const plan::Write& w = plan_.writes[t.index];
    const uint32_t r = plan_.dests[w.dest].receiver;
    Target& tg = receivers_.at(r);
    GroupWrite g;
    if (w.project >= 0) {
      g.src = &staging_region_;
      g.src_off = w.src_off;
    } else {
      auto it = layout_.by_param.find(w.src_param);
      if (it == layout_.by_param.end()) return invalid("write {} reads a shard rank {} does not hold", t.index, rank_);
      g.src = &arena_region_;
      g.src_off = layout_.shards[it->second].offset + w.src_off;
    }
    g.peer = tg.peer;
    g.dst = &tg.region;
    g.dst_off = tg.layout.offset.at(w.dest) + w.dst_off;
    g.len = w.len;
    g.has_imm = true;
    g.imm = Imm{gen, static_cast<uint8_t>(w.phase), static_cast<uint16_t>(rank_)}.encode();
    pending.push_back(g);
    rep.bytes += w.len;
    ++rep.writes;
  }
  flush();
  const auto tw = Clock::now();
  for (uint64_t b : batches)
    if (Status s = engine_->wait(b, deadline); !s)
      return Status(s.code(), fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
  rep.write_s = since(tw);
  rep.total_s = since(t0);
  return rep;
}

Result<std::unique_ptr<InferenceReceiver>> InferenceReceiver::create(const spec::Inputs& in, const plan::Plan& plan,
                                                                     uint32_t receiver,
                                                                     const std::vector<transport::DomainConfig>& nics,
                                                                     transport::RendezvousClient* rdv) {
  if (receiver >= plan.receivers.size())
    return invalid("inference receiver {} is not in the plan ({} receivers)", receiver, plan.receivers.size());
  std::unique_ptr<InferenceReceiver> r(new InferenceReceiver(in, plan));
  r->receiver_ = receiver;
  r->rdv_ = rdv;
  r->layout_ = receiver_layout(plan, receiver);
  r->arena_.resize(std::max<uint64_t>(r->layout_.bytes, 1));
  auto eng = transport::ProgressEngine::start(nics, &r->counters_);
  if (!eng) return eng.status();
  r->engine_ = std::move(eng).value();
  for (const Expectation& e : expectations(plan, receiver, static_cast<uint32_t>(nics.size())))
    r->expect_.push_back({static_cast<uint8_t>(e.phase), e.sender, e.count});
  for (const plan::Write& w : plan.writes)
    if (plan.dests[w.dest].receiver == receiver) r->bytes_ += w.len;
  return r;
}

std::byte* InferenceReceiver::tensor(uint32_t dest) {
  auto it = layout_.offset.find(dest);
  return it == layout_.offset.end() ? nullptr : arena_.data() + it->second;
}

Status InferenceReceiver::publish() {
  auto reg = engine_->register_memory(arena_.data(), arena_.size(), transport::MemKind::kHost);
  if (!reg) return reg.status();
  region_ = *reg;
  if (Status s = rdv_->put(key("region", receiver_), transport::NicGroup::remote(region_).serialize()); !s) return s;
  return rdv_->put(key("recv", receiver_), engine_->address());
}

void InferenceReceiver::begin(uint8_t generation) { counters_.begin_generation(generation); }

Result<WaitReport> InferenceReceiver::wait(uint8_t step, Clock::time_point deadline) {
  const auto t0 = Clock::now();
  Status s = counters_.wait(step, expect_, deadline);
  if (!s)
    return Status(s.code(), fmt::format("receiver {} (replica {} rank {}) generation {}: {}", receiver_,
                                        plan_.receivers[receiver_].replica, plan_.receivers[receiver_].rank, step,
                                        s.message()));
  WaitReport w;
  w.step = step;
  w.bytes = bytes_;
  for (const auto& e : expect_) w.imms += e.count;
  w.wait_s = since(t0);
  return w;
}

}  // namespace weightcast::exec
