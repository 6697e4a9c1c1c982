// Host executor and receiver.
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

#include "weightcast/exec/keys.h"
#include "weightcast/exec/project_cuda.h"
#include "weightcast/plan/part.h"
#include "weightcast/plan/project.h"

namespace weightcast::exec {

using transport::GroupWrite;
using transport::Imm;

namespace {
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

Result<std::unique_ptr<TrainerExecutor>> TrainerExecutor::create(
    const spec::Inputs& in, const plan::Plan& plan, uint32_t rank,
    const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
    bool allocate, MemoryKind shards, int cuda_device) {
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
  for (const plan::Write& w : plan.writes)
    if (w.sender == rank && w.project < 0 && !e->wire_gpu_) e->host_read_.insert(w.src_param);
  for (const plan::Gather& g : plan.gathers)
    for (const plan::Gather::Piece& p : g.pieces)
      if (p.rank == rank && !e->wire_gpu_) e->host_read_.insert(g.param);
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
  auto coll = HostCollective::create(
      in, plan, rank, e->engine_.get(), &e->counters_, rdv,
      [self](int param) -> Result<std::pair<core::Box, const std::byte*>> {
        auto it = self->layout_.by_param.find(param);
        if (self->wire_gpu_) {  // gathered on the GPU, from the device shards
          auto d = self->device_shard_.find(param);
          if (it == self->layout_.by_param.end() || d == self->device_shard_.end())
            return std::pair{core::Box{}, static_cast<const std::byte*>(nullptr)};
          return std::pair{self->layout_.shards[it->second].box,
                           static_cast<const std::byte*>(d->second)};
        }
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
InferenceReceiver::~InferenceReceiver() { engine_.reset(); }

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
  if (Status s = rdv_->put(keys::sender_address(rank_, incarnation_), engine_->address()); !s)
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
  auto addr = rdv_->get(keys::receiver_address(r, incarnation), deadline);
  if (!addr)
    return Status(addr.status().code(), fmt::format("receiver {}: {}", r, addr.status().message()));
  auto peer = engine_->connect(*addr);
  if (!peer) return peer.status();
  auto desc = rdv_->get(keys::receiver_tensors(r, incarnation), deadline);
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
  if (Status s = connect_receiver(r, incarnation, deadline); !s) return s;
  if (engine_->caps().connect_both_ends) return Status::ok();
  Target& t = receivers_[r];
  return engine_->wait(
      engine_->submit({{&staging_region_, 0, t.peer, &t.tensors.begin()->second, 0, 0, false, 0}}),
      deadline);
}

Result<std::unique_ptr<InferenceReceiver>> InferenceReceiver::create(
    const spec::Inputs& /*in*/, const plan::Plan& plan, uint32_t receiver,
    const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
    bool allocate) {
  if (receiver >= plan.receivers.size())
    return invalid("inference receiver {} is not in the plan ({} receivers)", receiver,
                   plan.receivers.size());
  std::unique_ptr<InferenceReceiver> r(new InferenceReceiver(plan));
  r->receiver_ = receiver;
  r->rdv_ = rdv;
  r->layout_ = receiver_layout(plan, receiver);
  auto eng = transport::ProgressEngine::start(nics, &r->counters_);
  if (!eng) return eng.status();
  r->engine_ = std::move(eng).value();
  if (allocate) {
    auto arena = Buffer::allocate(MemoryKind::kHost, std::max<uint64_t>(r->layout_.bytes, 1));
    if (!arena) return arena.status();
    r->arena_ = std::move(arena).value();
    auto reg =
        r->engine_->register_memory(r->arena_.data(), r->arena_.size(), transport::MemKind::kHost);
    if (!reg) return reg.status();
    r->regions_.push_back(*reg);
    for (const auto& [d, off] : r->layout_.offset) {
      r->bound_[d] = {r->arena_.data() + off, &r->regions_.back()};
      r->bound_off_[d] = off;
    }
  }
  for (const Expectation& e : expectations(plan, receiver, static_cast<uint32_t>(nics.size())))
    r->expect_.push_back({static_cast<uint8_t>(e.phase), e.sender, e.count});
  for (const plan::Write& w : plan.writes)
    if (plan.dests[w.dest].receiver == receiver) {
      r->bytes_ += w.len;
      r->senders_[w.sender] = -1;
    }
  r->both_ends_ = r->engine_->caps().connect_both_ends;
  return r;
}

Status InferenceReceiver::bind_tensor(const std::string& name, bool scales, void* data,
                                      uint64_t bytes) {
  for (const auto& [d, off] : layout_.offset) {
    const plan::DestTensor& dt = plan_.dests[d];
    if (plan_.dest_names[dt.param] != name || dt.scale != scales) continue;
    if (bytes != dt.bytes)
      return invalid("bind_tensor('{}'{}): {} bytes given, receiver {} needs {} ({} {})", name,
                     scales ? ", scales" : "", bytes, receiver_, dt.bytes,
                     core::dtype_name(dt.dtype), dt.shape.str());
    // GPU memory is registered as such where the transport can write it (dma-buf / peer
    // memory, FI_HMEM); elsewhere it is staged (set_staging), and the error says why.
    const bool cuda = pointer_kind(data) == MemoryKind::kCuda;
    if (staging_ == Staging::kAlways) return stage_tensor(d, data, bytes, cuda);
    auto reg = engine_->register_memory(
        data, bytes, cuda ? transport::MemKind::kCuda : transport::MemKind::kHost);
    if (!reg && cuda && staging_ == Staging::kAuto) return stage_tensor(d, data, bytes, true);
    if (!reg)
      return Status(reg.status().code(),
                    fmt::format("bind_tensor('{}'): {}", name, reg.status().message()));
    regions_.push_back(*reg);
    bound_[d] = {static_cast<std::byte*>(data), &regions_.back()};
    bound_off_[d] = 0;
    (cuda ? direct_gpu_ : direct_host_) = true;
    return Status::ok();
  }
  return invalid("bind_tensor: receiver {} holds no {}'{}'", receiver_, scales ? "scales of " : "",
                 name);
}

std::byte* InferenceReceiver::tensor(uint32_t dest) {
  if (auto st = staged_.find(dest); st != staged_.end()) return st->second.target;
  auto it = bound_.find(dest);
  return it == bound_.end() ? nullptr : it->second.first;
}

// The NIC writes a registered host landing area (pinned, for CUDA tensors); wait() copies it in.
Status InferenceReceiver::stage_tensor(uint32_t d, void* data, uint64_t bytes, bool cuda) {
  const std::string name = plan_.dest_names[plan_.dests[d].param];
  auto buf = Buffer::allocate(MemoryKind::kHost, std::max<uint64_t>(bytes, 1));
  if (!buf) return buf.status();
  if (cuda) {
    if (Status s = buf->pin(); !s) return s;
    if (!copy_queue_created_) {
      auto q = CopyQueue::create(std::max(device_, 0), 1, true);
      if (!q) return q.status();
      copy_queue_ = std::move(q).value();
      copy_queue_created_ = true;
    }
  }
  auto reg = engine_->register_memory(buf->data(), bytes, transport::MemKind::kHost);
  if (!reg)
    return Status(reg.status().code(),
                  fmt::format("bind_tensor('{}'): staging area: {}", name, reg.status().message()));
  regions_.push_back(*reg);
  Staged& st = staged_[d];
  st.target = static_cast<std::byte*>(data);
  st.landing = std::move(buf).value();
  st.cuda = cuda;
  bound_[d] = {st.landing.data(), &regions_.back()};
  bound_off_[d] = 0;
  return Status::ok();
}

std::string InferenceReceiver::memory_mode() const {
  std::string m;
  auto add = [&](bool on, const char* what) {
    if (on) m += (m.empty() ? "" : "+") + std::string(what);
  };
  add(direct_host_ || (!direct_gpu_ && staged_.empty()), "host");
  add(direct_gpu_, "gpu");
  add(!staged_.empty(), "staged");
  return m;
}

// Per sender (one group of expect_), the byte ranges it writes into staged tensors, coalesced.
void InferenceReceiver::plan_copies() {
  groups_.clear();
  copies_.clear();
  std::map<uint16_t, size_t> group_of;
  for (const transport::Expect& e : expect_) {
    auto [it, fresh] = group_of.emplace(e.sender, groups_.size());
    if (fresh) groups_.emplace_back();
    groups_[it->second].push_back(e);
  }
  copies_.resize(groups_.size());
  for (const plan::Write& w : plan_.writes) {
    auto g = group_of.find(static_cast<uint16_t>(w.sender));
    if (g == group_of.end() || !staged_.count(w.dest) || plan_.dests[w.dest].receiver != receiver_)
      continue;
    copies_[g->second].push_back({w.dest, w.dst_off, w.len});
  }
  for (auto& c : copies_) {
    std::sort(c.begin(), c.end(), [](const CopyRange& a, const CopyRange& b) {
      return a.dest != b.dest ? a.dest < b.dest : a.off < b.off;
    });
    std::vector<CopyRange> merged;
    for (const CopyRange& r : c)
      if (!merged.empty() && merged.back().dest == r.dest &&
          merged.back().off + merged.back().len == r.off)
        merged.back().len += r.len;
      else
        merged.push_back(r);
    c = std::move(merged);
  }
}

Status InferenceReceiver::copy_group(size_t g) {
  for (const CopyRange& r : copies_[g]) {
    const Staged& st = staged_.at(r.dest);
    if (!st.cuda) {
      std::memcpy(st.target + r.off, st.landing.data() + r.off, r.len);
      continue;
    }
    if (Status s = copy_queue_.to_device(0, st.target + r.off, st.landing.data() + r.off, r.len);
        !s)
      return Status(s.code(),
                    fmt::format("receiver {}: copying '{}' to the GPU: {}", receiver_,
                                plan_.dest_names[plan_.dests[r.dest].param], s.message()));
  }
  return Status::ok();
}

Status InferenceReceiver::publish() {
  std::vector<std::pair<uint32_t, transport::RemoteRegion>> descs;
  std::string unbound;
  for (const auto& [d, off] : layout_.offset) {
    auto it = bound_.find(d);
    if (it == bound_.end()) {
      unbound +=
          fmt::format("{}{}{}", unbound.empty() ? "" : ", ", plan_.dest_names[plan_.dests[d].param],
                      plan_.dests[d].scale ? " (scales)" : "");
      continue;
    }
    // A view of the tensor inside its registered region.
    transport::RemoteRegion rr = transport::NicGroup::remote(*it->second.second);
    for (auto& k : rr.per_nic) {
      k.addr += bound_off_[d];
      k.len = plan_.dests[d].bytes;
    }
    rr.len = plan_.dests[d].bytes;
    descs.push_back({plan::global_dest(plan_, d), rr});
  }
  if (!unbound.empty()) return invalid("receiver {}: tensors not bound: {}", receiver_, unbound);
  plan_copies();
  if (Status s =
          rdv_->put(keys::receiver_tensors(receiver_, incarnation_), serialize_descriptors(descs));
      !s)
    return s;
  return rdv_->put(keys::receiver_address(receiver_, incarnation_), engine_->address());
}

void InferenceReceiver::begin(uint8_t generation) { counters_.begin_generation(generation); }

Status InferenceReceiver::connect_senders(std::span<const uint32_t> incarnations,
                                          Clock::time_point deadline) {
  if (!both_ends_) return Status::ok();
  for (auto& [s, connected] : senders_) {
    const uint32_t inc = s < incarnations.size() ? incarnations[s] : 0;
    if (connected == static_cast<int64_t>(inc)) continue;
    auto addr = rdv_->get(keys::sender_address(s, inc), deadline);
    if (!addr)
      return Status(addr.status().code(), fmt::format("receiver {}: sender {}: {}", receiver_, s,
                                                      addr.status().message()));
    auto peer = engine_->connect(*addr);
    if (!peer) return peer.status();
    connected = inc;
  }
  return Status::ok();
}

Result<WaitReport> InferenceReceiver::wait(uint8_t step, Clock::time_point deadline) {
  const auto t0 = Clock::now();
  auto named = [&](const Status& s) {
    return Status(s.code(), fmt::format("receiver {} (replica {} rank {}) generation {}: {}",
                                        receiver_, plan_.receivers[receiver_].replica,
                                        plan_.receivers[receiver_].rank, step, s.message()));
  };
  WaitReport w;
  if (staged_.empty()) {
    if (Status s = counters_.wait(step, expect_, deadline); !s) return named(s);
  } else {
    // Each sender's bytes are copied in as soon as its immediates are all here.
    std::vector<bool> done;
    auto last = Clock::now();  // when the last sender's immediates were all here
    for (size_t k = 0; k < groups_.size(); ++k) {
      auto g = counters_.wait_any(step, groups_, done, deadline);
      if (!g) return named(g.status());
      last = Clock::now();
      if (Status c = copy_group(*g); !c) return c;
      for (const CopyRange& r : copies_[*g]) w.staged_bytes += r.len;
    }
    if (copy_queue_created_)
      if (Status s = copy_queue_.wait(0); !s) return named(s);
    w.staging_s = since(last);
  }
  w.step = step;
  w.bytes = bytes_;
  for (const auto& e : expect_) w.imms += e.count;
  w.wait_s = since(t0);
  return w;
}

}  // namespace weightcast::exec
