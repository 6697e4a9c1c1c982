// The trainer's executor: creation, binding, connecting to receivers, and push (the attempt
// itself is attempt.cpp).
#include "weightcast/exec/executor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <set>
#include <thread>

#include "weightcast/core/log.h"
#include "weightcast/exec/nccl_collective.h"
#include "weightcast/exec/project_cuda.h"
#include "weightcast/plan/part.h"
#include "weightcast/plan/project.h"
#include "weightcast/session/keys.h"

namespace weightcast::exec {

using transport::GroupWrite;
using transport::Imm;

namespace {
// Rank `rank`'s projections whose writes map their staging linearly onto their dest tensors:
// output byte k of the projection lands at out_base + k of its dest, scale byte k at
// scale_base + k of the scale tensor (then a kernel can write them there itself).
std::vector<TrainerExecutor::InPlace> in_place_projections(const plan::Plan& plan, uint32_t rank) {
  std::vector<TrainerExecutor::InPlace> at(plan.projects.size());
  std::vector<bool> bad(plan.projects.size());
  for (const plan::Write& w : plan.writes) {
    if (w.sender != rank || w.project < 0) continue;
    const auto k = static_cast<size_t>(w.project);
    const plan::Project& p = plan.projects[k];
    const bool scale = p.scale_dest >= 0 && w.dest == static_cast<uint32_t>(p.scale_dest);
    if (!scale && w.dest != p.dest) {
      bad[k] = true;
      continue;
    }
    const uint64_t start = scale ? p.scale_off : p.staging_off;
    if (w.src_off < start || w.dst_off < w.src_off - start) {
      bad[k] = true;
      continue;
    }
    const auto base = static_cast<int64_t>(w.dst_off - (w.src_off - start));
    int64_t& b = scale ? at[k].scale_base : at[k].out_base;
    if (b >= 0 && b != base) bad[k] = true;
    b = base;
  }
  for (size_t k = 0; k < at.size(); ++k) {
    const plan::Project& p = plan.projects[k];
    if (bad[k] || p.sender != rank || at[k].out_base < 0 ||
        (p.scale_dest >= 0) != (at[k].scale_base >= 0))
      at[k] = {};
  }
  return at;
}
}  // namespace

std::vector<TrainerExecutor::InPlace> TrainerExecutor::in_place_for_tests(const plan::Plan& plan,
                                                                          uint32_t rank) {
  return in_place_projections(plan, rank);
}

Result<std::byte*> TrainerExecutor::window(uint32_t receiver, uint32_t dest) {
  const Target& t = receivers_.at(receiver);
  auto [it, fresh] = windows_.try_emplace({receiver, dest});
  Window& w = it->second;
  if (!fresh && w.incarnation == t.incarnation)  // asked before: the answer stands
    return w.base ? Result<std::byte*>(w.base) : Result<std::byte*>(w.why);
  const transport::RemoteRegion& r = t.tensors.at(dest);
  auto p = engine_->device_window(t.peer, r, 0, r.len);
  w = {t.incarnation, p ? static_cast<std::byte*>(*p) : nullptr, p ? Status::ok() : p.status()};
  return w.base ? Result<std::byte*>(w.base) : Result<std::byte*>(w.why);
}

Result<std::unique_ptr<TrainerExecutor>> TrainerExecutor::create(
    const spec::Inputs& in, const plan::Plan& plan, uint32_t rank,
    const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
    bool allocate, MemoryKind shards, int cuda_device, bool nccl_gathers) {
  if (rank >= plan.senders.size())
    return invalid("trainer rank {} is not in the plan ({} senders)", rank, plan.senders.size());
  if (plan.phases > transport::Imm::kAbortPhase)
    return invalid("the plan has {} phases; immediates carry at most {}", plan.phases,
                   transport::Imm::kAbortPhase);
  std::unique_ptr<TrainerExecutor> e(new TrainerExecutor(in, plan));
  e->rank_ = rank;
  e->rdv_ = rdv;
  // Test hook: WEIGHTCAST_DEBUG_PROJECT_DELAY=RANK:MS makes trainer RANK sleep MS before each
  // projection, so tests can hold a gather root in a step while its members run ahead.
  if (const char* d = std::getenv("WEIGHTCAST_DEBUG_PROJECT_DELAY")) {
    unsigned r = 0, ms = 0;
    if (std::sscanf(d, "%u:%u", &r, &ms) == 2 && r == rank) e->debug_project_delay_ms_ = ms;
  }
  e->layout_ = sender_layout(in, rank);
  // Host memory for now (exec::Buffer; the GPU executor allocates the same areas on the device).
  const plan::Sender& s = plan.senders[rank];
  // (At least a byte each: every area is registered with the NICs.)
  e->shard_kind_ = shards;
  e->cuda_device_ = cuda_device;
  const bool device = shards == MemoryKind::kCuda;
  auto eng = transport::ProgressEngine::start(nics, &e->counters_);
  if (!eng) return eng.status();
  e->engine_ = std::move(eng).value();
  // GPU shards on a transport that writes GPU memory (ipc, FI_HMEM, dma-buf): direct writes and
  // projection outputs go out from the GPU; only gather pieces come to the host.
  e->wire_gpu_ = device && e->engine_->caps().device_memory;
  if (e->wire_gpu_ && e->engine_->caps().in_place_gpu_writes &&
      !std::getenv("WEIGHTCAST_NO_IN_PLACE"))  // (the env: measure the staged path)
    e->in_place_ = in_place_projections(plan, rank);
  for (const plan::Write& w : plan.writes)
    if (w.sender == rank && w.project < 0 && !e->wire_gpu_) e->host_read_.insert(w.src_param);
  for (const plan::Gather& g : plan.gathers)
    for (const plan::Gather::Piece& p : g.pieces)
      if (p.rank == rank && !e->wire_gpu_ && !nccl_gathers) e->host_read_.insert(g.param);
  auto arena = Buffer::allocate(MemoryKind::kHost,
                                allocate || device ? std::max<uint64_t>(e->layout_.bytes, 1) : 1);
  const uint64_t staging_bytes = std::max<uint64_t>(s.staging_gather + s.staging_ring, 1);
  auto staging = Buffer::allocate(MemoryKind::kHost, e->wire_gpu_ ? 1 : staging_bytes);
  if (!arena) return arena.status();
  if (!staging) return staging.status();
  e->arena_ = std::move(arena).value();
  e->staging_ = std::move(staging).value();
  auto a =
      e->engine_->register_memory(e->arena_.data(), e->arena_.size(), transport::MemKind::kHost);
  if (!a) return a.status();
  e->arena_region_ = *a;
  if (e->wire_gpu_) {  // projections land in device staging, and are written from there
    auto ds = Buffer::allocate(MemoryKind::kCuda, staging_bytes, cuda_device);
    if (!ds) return ds.status();
    e->device_staging_ = std::move(ds).value();
  }
  auto st = e->wire_gpu_
                ? e->engine_->register_memory(e->device_staging_.data(), e->device_staging_.size(),
                                              transport::MemKind::kCuda)
                : e->engine_->register_memory(e->staging_.data(), e->staging_.size(),
                                              transport::MemKind::kHost);
  if (!st) return st.status();
  e->staging_region_ = *st;
  if (device) {
    // The order in which a step first reads its host-read shards: its mirror copies queue so.
    std::vector<int> order;
    std::set<int> seen;
    auto first_read = [&](int param) {
      if (seen.insert(param).second) order.push_back(param);
    };
    for (const plan::Task& t : s.tasks) {
      if (e->wire_gpu_) break;  // nothing is read on the host
      if (t.op == plan::Task::Op::kGather) {
        const plan::Gather& g = plan.gathers[t.index];
        for (const plan::Gather::Piece& p : g.pieces)
          if (p.rank == rank) first_read(g.param);
      } else if (t.op == plan::Task::Op::kWrite && plan.writes[t.index].project < 0) {
        first_read(plan.writes[t.index].src_param);
      }
    }
    for (int param : e->host_read_) first_read(param);
    TrainerExecutor* self = e.get();
    if (Status ms =
            e->wire_gpu_
                ? Status::ok()
                : e->mirror_.init(
                      cuda_device, std::move(order), e->host_read_,
                      [self](int param) -> Result<ShardMirror::Copy> {
                        auto it = self->device_shard_.find(param);
                        auto slot = self->layout_.by_param.find(param);
                        if (it == self->device_shard_.end() || slot == self->layout_.by_param.end())
                          return invalid("trainer rank {}: shard of '{}' is not bound", self->rank_,
                                         self->in_.trainer.params[param].name);
                        const ShardSlot& sl = self->layout_.shards[slot->second];
                        return ShardMirror::Copy{self->arena_.data() + sl.offset, it->second,
                                                 sl.bytes, self->in_.trainer.params[param].name};
                      });
        !ms)
      return ms;
    auto m = CopyQueue::create(cuda_device, kMarks, false);  // on the pushing thread's stream
    if (!m) return m.status();
    e->proj_marks_ = std::move(m).value();
    // Page-locked, so the copies to and from the device run at full speed.
    for (Buffer* b : {&e->arena_, &e->staging_})
      if (Status p = b->pin(); !p) return p;
    if (!e->wire_gpu_) {
      auto ds = Buffer::allocate(MemoryKind::kCuda, e->staging_.size(), cuda_device);
      if (!ds) return ds.status();
      e->device_staging_ = std::move(ds).value();
    }
    if (allocate) {
      auto da =
          Buffer::allocate(MemoryKind::kCuda, std::max<uint64_t>(e->layout_.bytes, 1), cuda_device);
      if (!da) return da.status();
      e->device_arena_ = std::move(da).value();
      for (const ShardSlot& slot : e->layout_.shards)
        e->device_shard_[slot.param] = e->device_arena_.data() + slot.offset;
      if (e->wire_gpu_) {
        auto dr = e->engine_->register_memory(e->device_arena_.data(), e->device_arena_.size(),
                                              transport::MemKind::kCuda);
        if (!dr) return dr.status();
        e->user_regions_.push_back(*dr);
        for (const ShardSlot& slot : e->layout_.shards)
          e->wire_[slot.param] = {e->device_arena_.data() + slot.offset, &e->user_regions_.back(),
                                  slot.offset};
      }
    }
  }
  // Writes and gathers read shards from `bound_`: the shards themselves, or their host mirror.
  if (allocate)
    for (const ShardSlot& slot : e->layout_.shards)
      e->bound_[slot.param] = {e->arena_.data() + slot.offset, &e->arena_region_, slot.offset};
  TrainerExecutor* self = e.get();
  // This rank's device shard of a param (box and pointer; nullptr if not held or not bound).
  auto device_shard = [self](int param) -> Result<std::pair<core::Box, const std::byte*>> {
    auto it = self->layout_.by_param.find(param);
    auto d = self->device_shard_.find(param);
    if (it == self->layout_.by_param.end() || d == self->device_shard_.end())
      return std::pair{core::Box{}, static_cast<const std::byte*>(nullptr)};
    return std::pair{self->layout_.shards[it->second].box,
                     static_cast<const std::byte*>(d->second)};
  };
  if (nccl_gathers) {  // between the device shards, over NVLink
    if (!device)
      return invalid("trainer rank {}: NCCL gathers need GPU shards (JobConfig.cuda_device)", rank);
    auto nc = create_nccl_collective(in, plan, rank, rdv, device_shard, cuda_device);
    if (!nc)
      return Status(nc.status().code(),
                    fmt::format("trainer rank {}: {}", rank, nc.status().message()));
    e->collective_ = std::move(nc).value();
    return e;
  }
  auto coll = HostCollective::create(
      in, plan, rank, e->engine_.get(), &e->counters_, rdv,
      [self, device_shard](int param) -> Result<std::pair<core::Box, const std::byte*>> {
        if (self->wire_gpu_) return device_shard(param);  // gathered on the GPU
        auto it = self->layout_.by_param.find(param);
        // GPU shards: this step's bytes come to the host mirror first.
        if (Status m = self->mirror_.wait(param); !m)
          return Status(m.code(), fmt::format("trainer rank {} {}", self->rank_, m.message()));
        auto b = self->bound_.find(param);
        if (it == self->layout_.by_param.end() || b == self->bound_.end())
          return std::pair{core::Box{}, static_cast<const std::byte*>(nullptr)};
        return std::pair{self->layout_.shards[it->second].box,
                         static_cast<const std::byte*>(b->second.data)};
      },
      e->wire_gpu_ ? MemoryKind::kCuda : MemoryKind::kHost, cuda_device);
  if (!coll) return coll.status();
  e->collective_ = std::move(coll).value();
  // Pieces go out from the registered shards: host shards, or device shards the transport writes
  // from (not the host mirror, which the lookup above fills each step). Test hook:
  // WEIGHTCAST_DEBUG_PACK_GATHERS=1 packs every piece, as for shards of other layouts.
  if (!std::getenv("WEIGHTCAST_DEBUG_PACK_GATHERS"))
    e->collective_->set_sources(
        [self](int param) -> std::optional<std::pair<const transport::Region*, uint64_t>> {
          const auto& from = self->shard_kind_ == MemoryKind::kHost ? self->bound_ : self->wire_;
          auto it = from.find(param);
          if (it == from.end() || !it->second.region) return std::nullopt;
          return std::pair{it->second.region, it->second.offset};
        });
  if (device)
    if (Status p = e->collective_->pin_buffer(); !p) return p;
  return e;
}

// The NICs close (and deregister every region) before any registered memory is freed: the
// buffers, the collective's gather and packing areas and the caller's tensors may still be
// remote-writable while an endpoint is open.
TrainerExecutor::~TrainerExecutor() { engine_.reset(); }

uint32_t TrainerExecutor::receiver_incarnation(uint32_t receiver) const {
  auto it = receivers_.find(receiver);
  return it == receivers_.end() ? 0 : it->second.incarnation;
}

Result<StepReport> TrainerExecutor::push(uint8_t gen, Clock::time_point deadline,
                                         uint64_t max_writes, const ReadyFn& ready) {
  if (fenced_) {  // an earlier attempt's writes may still read staging or land in receivers
    if (Status d = engine_->drain(deadline); !d)
      return Status(d.code(),
                    fmt::format("trainer rank {}: writes of an earlier failed attempt are still "
                                "in flight, so nothing is projected or written: {}",
                                rank_, d.message()));
    fenced_ = false;
  }
  armed_.clear();
  batch_receivers_.clear();
  auto rep = run_attempt(gen, deadline, max_writes, ready);
  if (rep) return rep;
  Status a = abort_attempt(deadline);
  return Status(
      rep.status().code(),
      a ? rep.status().message() : fmt::format("{}; {}", rep.status().message(), a.message()));
}

Status TrainerExecutor::abort_attempt(Clock::time_point deadline) {
  // The deadline may be what failed the attempt: the fence still gets a moment.
  const auto until = std::max(deadline, Clock::now() + std::chrono::seconds(1));
  if (Status d = engine_->drain(until); !d) {
    fenced_ = true;
    return Status(d.code(), fmt::format("trainer rank {}: the failed attempt's writes are not all "
                                        "drained ({}); the next push drains them first",
                                        rank_, d.message()));
  }
  // Receivers whose generation this attempt used need not wait for the rest of its writes.
  std::vector<GroupWrite> abort;
  for (const auto& [r, a] : armed_) {
    auto it = receivers_.find(r);
    if (it == receivers_.end() || it->second.incarnation != a.incarnation) continue;
    abort.push_back({&staging_region_, 0, it->second.peer, &it->second.tensors.begin()->second, 0,
                     0, true,
                     Imm{a.generation, Imm::kAbortPhase, static_cast<uint16_t>(rank_)}.encode()});
  }
  if (abort.empty()) return Status::ok();
  // Best effort (a dead receiver cannot hear it); whatever happens, nothing stays in flight.
  (void)engine_->wait(engine_->submit(std::move(abort)), until);
  if (Status d = engine_->drain(until); !d) fenced_ = true;
  return Status::ok();
}

Status TrainerExecutor::bind_shard(const std::string& name, void* data, uint64_t bytes) {
  auto it = in_.trainer.index.find(name);
  if (it == in_.trainer.index.end())
    return invalid("bind_shard: no trainer parameter named '{}'", name);
  auto slot = layout_.by_param.find(it->second);
  if (slot == layout_.by_param.end())
    return invalid("bind_shard: trainer rank {} holds no shard of '{}'", rank_, name);
  const ShardSlot& s = layout_.shards[slot->second];
  if (bytes != s.bytes)
    return invalid("bind_shard('{}'): {} bytes given, the rank's shard {} is {} bytes", name, bytes,
                   s.box.str(), s.bytes);
  if (const MemoryKind k = pointer_kind(data); k != shard_kind_)
    return invalid("bind_shard('{}'): the pointer is {} memory, but this rank's shards are {}",
                   name, k == MemoryKind::kCuda ? "CUDA device" : "host",
                   shard_kind_ == MemoryKind::kCuda ? "on the GPU" : "in host memory");
  if (shard_kind_ == MemoryKind::kCuda) {  // the mirror slot stands in for it on the host
    if (wire_gpu_) {                       // and the shard itself on the wire
      auto reg = engine_->register_memory(data, bytes, transport::MemKind::kCuda);
      if (!reg)
        return Status(reg.status().code(),
                      fmt::format("bind_shard('{}'): {}", name, reg.status().message()));
      user_regions_.push_back(*reg);
      wire_[s.param] = {static_cast<std::byte*>(data), &user_regions_.back(), 0};
    }
    device_shard_[s.param] = static_cast<std::byte*>(data);
    bound_[s.param] = {arena_.data() + s.offset, &arena_region_, s.offset};
    return Status::ok();
  }
  auto reg = engine_->register_memory(data, bytes, transport::MemKind::kHost);
  if (!reg) return reg.status();
  user_regions_.push_back(*reg);
  bound_[s.param] = {static_cast<std::byte*>(data), &user_regions_.back(), 0};
  return Status::ok();
}

std::byte* TrainerExecutor::shard(int param) {
  if (shard_kind_ == MemoryKind::kCuda) {
    auto it = device_shard_.find(param);
    return it == device_shard_.end() ? nullptr : it->second;
  }
  auto it = bound_.find(param);
  return it == bound_.end() ? nullptr : it->second.data;
}

Status TrainerExecutor::publish() {
  if (Status s = rdv_->put(session::keys::sender_address(rank_, incarnation_), engine_->address());
      !s)
    return s;
  return collective_->publish();
}

Status TrainerExecutor::prepare(Clock::time_point deadline,
                                std::span<const uint32_t> receiver_incarnations,
                                std::span<const uint32_t> trainer_incarnations) {
  std::string unbound;
  for (const ShardSlot& s : layout_.shards)
    if (!bound_.count(s.param))
      unbound += (unbound.empty() ? "" : ", ") + in_.trainer.params[s.param].name;
  if (!unbound.empty()) return invalid("trainer rank {}: shards not bound: {}", rank_, unbound);
  if (Status s = publish(); !s) return s;
  if (Status s = collective_->prepare(deadline, trainer_incarnations); !s) return s;
  std::set<uint32_t> recvs;
  for (const plan::Write& w : plan_.writes)
    if (w.sender == rank_) recvs.insert(plan_.dests[w.dest].receiver);
  for (uint32_t r : recvs)
    if (Status s = connect_receiver(
            r, r < receiver_incarnations.size() ? receiver_incarnations[r] : 0, deadline);
        !s)
      return s;
  if (engine_->caps().connect_both_ends) return Status::ok();  // RC: nothing to warm up
  // Warm every connection up (the first write to a peer pays for connection set-up).
  std::vector<GroupWrite> warm;
  for (auto& [r, t] : receivers_)
    warm.push_back({&staging_region_, 0, t.peer, &t.tensors.begin()->second, 0, 0, false, 0});
  return engine_->wait(engine_->submit(warm), deadline);
}

Status TrainerExecutor::connect_receiver(uint32_t r, uint32_t incarnation,
                                         Clock::time_point deadline) {
  auto addr = rdv_->get(session::keys::receiver_address(r, incarnation), deadline);
  if (!addr)
    return Status(addr.status().code(), fmt::format("receiver {}: {}", r, addr.status().message()));
  auto peer = engine_->connect(*addr);
  if (!peer) return peer.status();
  auto desc = rdv_->get(session::keys::receiver_tensors(r, incarnation), deadline);
  if (!desc) return desc.status();
  auto tensors = parse_descriptors(*desc);
  if (!tensors)
    return Status(tensors.status().code(),
                  fmt::format("receiver {}: {}", r, tensors.status().message()));
  // Descriptors are keyed by whole-plan dest ids; this rank's plan may be a part (plan/part.h).
  std::map<uint32_t, transport::RemoteRegion> mine;
  for (uint32_t d = 0; d < plan_.dests.size(); ++d) {
    if (plan_.dests[d].receiver != r) continue;
    auto it = tensors->find(plan::global_dest(plan_, d));
    const std::string name = fmt::format("'{}'{}", plan_.dest_names[plan_.dests[d].param],
                                         plan_.dests[d].scale ? " (scales)" : "");
    if (it == tensors->end()) return invalid("receiver {} published no descriptor for {}", r, name);
    // What a peer sends is checked before anything is written with it.
    if (it->second.len != plan_.dests[d].bytes)
      return invalid("receiver {} published {} as {} bytes; the plan says {}", r, name,
                     it->second.len, plan_.dests[d].bytes);
    if (it->second.per_nic.size() != engine_->nics())
      return invalid("receiver {} published {} with {} NIC key(s); this job has {} NIC(s) per peer",
                     r, name, it->second.per_nic.size(), engine_->nics());
    mine[d] = it->second;
  }
  receivers_[r] = Target{*peer, std::move(mine), incarnation};
  return Status::ok();
}

Status TrainerExecutor::rejoin(uint32_t r, uint32_t incarnation, Clock::time_point deadline) {
  auto it = receivers_.find(r);
  if (it == receivers_.end() || it->second.incarnation == incarnation) return Status::ok();
  core::log::warn({"trainer", rank_, incarnation_}, core::log::kNoStep,
                  "receiver {} restarted (incarnation {} -> {}): reconnecting", r,
                  it->second.incarnation, incarnation);
  ++rejoined_;
  if (Status s = connect_receiver(r, incarnation, deadline); !s) return s;
  if (engine_->caps().connect_both_ends) return Status::ok();
  Target& t = receivers_[r];
  return engine_->wait(
      engine_->submit({{&staging_region_, 0, t.peer, &t.tensors.begin()->second, 0, 0, false, 0}}),
      deadline);
}

}  // namespace weightcast::exec
