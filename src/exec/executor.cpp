// Host executor and receiver.
#include "weightcast/exec/executor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <cstdlib>
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
  for (const plan::Write& w : plan.writes)
    if (w.sender == rank && w.project < 0) e->host_read_.insert(w.src_param);
  for (const plan::Gather& g : plan.gathers)
    for (const plan::Gather::Piece& p : g.pieces)
      if (p.rank == rank) e->host_read_.insert(g.param);
  auto arena = Buffer::allocate(MemoryKind::kHost,
                                allocate || device ? std::max<uint64_t>(e->layout_.bytes, 1) : 1);
  auto staging =
      Buffer::allocate(MemoryKind::kHost, std::max<uint64_t>(s.staging_gather + s.staging_ring, 1));
  if (!arena) return arena.status();
  if (!staging) return staging.status();
  e->arena_ = std::move(arena).value();
  e->staging_ = std::move(staging).value();
  auto eng = transport::ProgressEngine::start(nics, &e->counters_);
  if (!eng) return eng.status();
  e->engine_ = std::move(eng).value();
  auto a =
      e->engine_->register_memory(e->arena_.data(), e->arena_.size(), transport::MemKind::kHost);
  if (!a) return a.status();
  e->arena_region_ = *a;
  auto st = e->engine_->register_memory(e->staging_.data(), e->staging_.size(),
                                        transport::MemKind::kHost);
  if (!st) return st.status();
  e->staging_region_ = *st;
  if (device) {
    // The order in which a step first reads its host-read shards: its mirror copies queue so.
    auto first_read = [&](int param) {
      if (e->mirror_slot_.emplace(param, e->mirror_order_.size()).second)
        e->mirror_order_.push_back(param);
    };
    for (const plan::Task& t : s.tasks) {
      if (t.op == plan::Task::Op::kGather) {
        const plan::Gather& g = plan.gathers[t.index];
        for (const plan::Gather::Piece& p : g.pieces)
          if (p.rank == rank) first_read(g.param);
      } else if (t.op == plan::Task::Op::kWrite && plan.writes[t.index].project < 0) {
        first_read(plan.writes[t.index].src_param);
      }
    }
    for (int param : e->host_read_) first_read(param);
    auto q = CopyQueue::create(cuda_device, e->mirror_order_.size());
    if (!q) return q.status();
    e->mirror_queue_ = std::move(q).value();
    auto m = CopyQueue::create(cuda_device, kMarks, false);  // on the pushing thread's stream
    if (!m) return m.status();
    e->proj_marks_ = std::move(m).value();
    // Page-locked, so the copies to and from the device run at full speed.
    for (Buffer* b : {&e->arena_, &e->staging_})
      if (Status p = b->pin(); !p) return p;
    auto ds = Buffer::allocate(MemoryKind::kCuda, e->staging_.size(), cuda_device);
    if (!ds) return ds.status();
    e->device_staging_ = std::move(ds).value();
    if (allocate) {
      auto da =
          Buffer::allocate(MemoryKind::kCuda, std::max<uint64_t>(e->layout_.bytes, 1), cuda_device);
      if (!da) return da.status();
      e->device_arena_ = std::move(da).value();
      for (const ShardSlot& slot : e->layout_.shards)
        e->device_shard_[slot.param] = e->device_arena_.data() + slot.offset;
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
        // GPU shards: this step's bytes come to the host mirror first.
        if (Status m = self->mirror(param); !m) return m;
        auto it = self->layout_.by_param.find(param);
        auto b = self->bound_.find(param);
        if (it == self->layout_.by_param.end() || b == self->bound_.end())
          return std::pair{core::Box{}, static_cast<const std::byte*>(nullptr)};
        return std::pair{self->layout_.shards[it->second].box,
                         static_cast<const std::byte*>(b->second.data)};
      });
  if (!coll) return coll.status();
  e->collective_ = std::move(coll).value();
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
  auto rep = push_attempt(gen, deadline, max_writes, ready);
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
  if (shard_kind_ == MemoryKind::kCuda) {  // the mirror slot stands in for it on the wire
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

Status TrainerExecutor::queue_mirror(int param) {
  auto it = device_shard_.find(param);
  auto slot = layout_.by_param.find(param);
  if (it == device_shard_.end() || slot == layout_.by_param.end())
    return invalid("trainer rank {}: shard of '{}' is not bound", rank_,
                   in_.trainer.params[param].name);
  const ShardSlot& s = layout_.shards[slot->second];
  if (Status st = mirror_queue_.to_host(mirror_slot_.at(param), arena_.data() + s.offset,
                                        it->second, s.bytes);
      !st)
    return Status(st.code(),
                  fmt::format("trainer rank {} step {}: copying '{}' to the host: {}", rank_, step_,
                              in_.trainer.params[param].name, st.message()));
  queued_.insert(param);
  return Status::ok();
}

Status TrainerExecutor::mirror(int param) {
  if (shard_kind_ != MemoryKind::kCuda || !host_read_.count(param) || mirrored_.count(param))
    return Status::ok();
  const auto t0 = Clock::now();
  if (!queued_.count(param))
    if (Status st = queue_mirror(param); !st) return st;
  if (Status st = mirror_queue_.wait(mirror_slot_.at(param)); !st)
    return Status(st.code(),
                  fmt::format("trainer rank {} step {}: copying '{}' to the host: {}", rank_, step_,
                              in_.trainer.params[param].name, st.message()));
  mirrored_.insert(param);
  mirror_s_ += since(t0);
  return Status::ok();
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
    if (it == tensors->end() || it->second.len < plan_.dests[d].bytes)
      return invalid("receiver {} published no (or a too small) buffer for '{}'", r,
                     plan_.dest_names[plan_.dests[d].param]);
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

Result<StepReport> TrainerExecutor::push_attempt(uint8_t gen, Clock::time_point deadline,
                                                 uint64_t max_writes, const ReadyFn& ready) {
  const auto t0 = Clock::now();
  const transport::ProgressStats stats0 = engine_->stats();
  const uint64_t post0 = stats0.post_ns;
  StepReport rep;
  rep.step = gen;
  const uint64_t step = gen;
  counters_.begin_generation(gen);  // this rank's gathers count immediates of this generation
  const bool device = shard_kind_ == MemoryKind::kCuda;
  if (device)
    if (Status s = cuda_use_device(cuda_device_); !s) return s;
  mirror_s_ = 0;
  step_ = gen;
  // First what others wait for. As a gather root: done with last step's boxes, so members may
  // write this step's.
  if (Status s = collective_->open(gen, deadline); !s)
    return Status(s.code(), fmt::format("trainer rank {} step {}: {}", rank_, gen, s.message()));
  // The receivers' readiness, awaited on a thread of its own while gathers and projections run.
  // Without a ready callback, every receiver armed `gen` at the incarnation in use.
  if (!ready)
    for (const auto& [r, t] : receivers_) armed_[r] = Armed{gen, t.incarnation};
  std::future<Result<std::map<uint32_t, Armed>>> ready_f;
  if (ready) ready_f = std::async(std::launch::async, ready);
  // kCuda: every host-read shard's copy to the host mirror is queued now, in the order the step
  // reads them, on a stream of their own; each read waits for its own copy only.
  mirrored_.clear();
  queued_.clear();
  if (device)
    for (int param : mirror_order_)
      if (device_shard_.count(param))
        if (Status s = queue_mirror(param); !s) return s;
  // Gather pieces go to their roots as early as the roots allow (again between projections).
  auto pump = [&]() -> Status {
    if (Status s = collective_->pump(gen, deadline); !s)
      return Status(s.code(), fmt::format("trainer rank {} step {}: {}", rank_, gen, s.message()));
    return Status::ok();
  };
  if (Status s = pump(); !s) return s;
  // Staging ranges still being read by in-flight writes.
  struct Inflight {
    uint64_t lo, hi, batch;
  };
  std::deque<Inflight> inflight;
  std::vector<uint64_t> batches;
  // Projections whose writes have not gone out yet, oldest first: their staging range, their mark
  // on the GPU stream (kCuda; -1 once waited for, or on the CPU) and the writes reading them. On
  // the GPU up to kMarks projections are queued ahead, so the GPU computes while earlier writes
  // are posted. Writes straight from shards wait in `direct`.
  struct Produced {
    uint64_t lo, hi;
    int mark;
    std::vector<PendingWrite> writes;
  };
  std::deque<Produced> produced;
  std::vector<PendingWrite> direct;
  unsigned marks = 0;
  int batch_mark = -1;    // the mark of the last batch of GPU projections queued, and
  size_t batch_last = 0;  // the task index of its last projection
  // A projection's staging range (output, then scales where planned), and whether one copy
  // brings both to the host.
  auto staged = [](const plan::Project& q) -> std::pair<uint64_t, uint64_t> {
    return {q.staging_off, q.scale_dest >= 0 ? q.scale_off + q.scale_box.numel() * 4
                                             : q.staging_off + q.out_bytes};
  };
  auto one_copy = [](const plan::Project& q) {
    return q.scale_dest < 0 || q.scale_off == q.staging_off + q.out_bytes;
  };
  auto await_ready = [&]() -> Status {
    if (!ready_f.valid()) return Status::ok();
    const auto tw = Clock::now();
    auto r = ready_f.get();
    rep.ready_s += since(tw);
    if (!r) return r.status();
    for (const auto& [rc, a] : *r) {
      if (!receivers_.count(rc)) continue;
      // Armed by a new incarnation (the receiver restarted): its new buffers from now on.
      if (Status s = rejoin(rc, a.incarnation, deadline); !s)
        return Status(s.code(), fmt::format("trainer rank {} step {}: reconnecting to receiver "
                                            "{} (incarnation {}): {}",
                                            rank_, gen, rc, a.incarnation, s.message()));
      armed_[rc] = a;
    }
    return Status::ok();
  };
  // Writes are bound to their receiver's connection, descriptor and generation only now.
  auto submit = [&](std::vector<PendingWrite>& ws, uint64_t lo, uint64_t hi) {
    if (ws.empty()) return;
    std::vector<GroupWrite> out;
    out.reserve(ws.size());
    std::set<uint32_t> to;
    for (PendingWrite& p : ws) {
      Target& tg = receivers_.at(p.receiver);
      p.g.peer = tg.peer;
      p.g.dst = &tg.tensors.at(p.dest);
      auto a = armed_.find(p.receiver);  // a receiver the ready callback left out armed `gen`
      p.g.imm =
          Imm{a == armed_.end() ? gen : a->second.generation, p.phase, static_cast<uint16_t>(rank_)}
              .encode();
      out.push_back(p.g);
      to.insert(p.receiver);
    }
    ws.clear();
    const uint64_t b = engine_->submit(std::move(out));
    batch_receivers_[b] = std::move(to);
    batches.push_back(b);
    if (hi > lo) inflight.push_back({lo, hi, b});  // the staging range these writes read
  };
  // A batch that failed names the receivers it wrote to.
  auto waited = [&](uint64_t b) -> Status {
    std::vector<uint32_t> bad;
    Status s = engine_->wait(b, deadline, &bad);
    if (s) return s;
    std::set<uint32_t> named;  // the receivers whose writes failed or are still out
    for (uint32_t p : bad)
      for (const auto& [r, t] : receivers_)
        if (t.peer == p) named.insert(r);
    if (named.empty())
      if (auto it = batch_receivers_.find(b); it != batch_receivers_.end()) named = it->second;
    return Status(s.code(), fmt::format("trainer rank {} step {}: writes to receiver {}: {}", rank_,
                                        gen, fmt::join(named, ", "), s.message()));
  };
  // Sends the writes of the oldest `n` projections (after their marks) and the direct ones, and
  // drops those projections; `keep_last` keeps the newest one, so writes that follow it are still
  // tied to its staging range. `block` = false: only if the receivers are ready already (else
  // everything stays queued for a later release).
  auto release = [&](size_t n, bool block, bool keep_last) -> Status {
    if (!block && ready_f.valid() &&
        ready_f.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      return Status::ok();
    n = std::min(n, produced.size());
    const size_t drop = keep_last && n == produced.size() && n > 0 ? n - 1 : n;
    bool any = !direct.empty();
    for (size_t i = 0; i < n; ++i) any = any || !produced[i].writes.empty();
    if (any) {
      if (Status r = await_ready(); !r) return r;
      submit(direct, 0, 0);
    }
    for (size_t i = 0; i < n && any; ++i) {
      Produced& e = produced[i];
      if (e.mark >= 0) {
        const auto tm = Clock::now();
        Status m = proj_marks_.wait(static_cast<size_t>(std::exchange(e.mark, -1)));
        rep.project_s += since(tm);
        if (!m)
          return Status(m.code(),
                        fmt::format("trainer rank {} step {}: {}", rank_, step, m.message()));
      }
      submit(e.writes, e.lo, e.hi);
    }
    produced.erase(produced.begin(), produced.begin() + static_cast<long>(drop));
    return Status::ok();
  };
  const auto& tasks = plan_.senders[rank_].tasks;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const plan::Task& t = tasks[ti];
    if (rep.writes >= max_writes) break;
    if (t.op == plan::Task::Op::kGather) {
      // A phase's gathers run together, before its projections; what is queued goes out first
      // if the receivers are ready.
      if (Status fs = release(produced.size(), false, true); !fs) return fs;
      std::vector<uint32_t> batch{t.index};
      const uint16_t phase = plan_.gathers[t.index].phase;
      while (ti + 1 < tasks.size() && tasks[ti + 1].op == plan::Task::Op::kGather &&
             plan_.gathers[tasks[ti + 1].index].phase == phase)
        batch.push_back(tasks[++ti].index);
      const auto tg = Clock::now();
      // (Pieces are read from host memory: the collective's shard lookup mirrors GPU shards.)
      if (Status s = collective_->run(gen, phase, batch, deadline); !s)
        return Status(s.code(),
                      fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
      if (device) {  // the GPU projects gathered boxes from a device copy of the buffer
        const Buffer& g = collective_->buffer();
        if (device_gbuf_.size() < g.size()) {
          auto b = Buffer::allocate(MemoryKind::kCuda, g.size(), cuda_device_);
          if (!b) return b.status();
          device_gbuf_ = std::move(b).value();
        }
        for (uint32_t gi : batch) {  // the boxes this root gathered (members hold nothing)
          const std::byte* h = collective_->gathered(gi);
          if (!h) continue;
          const plan::Gather& ga = plan_.gathers[gi];
          const uint64_t n = static_cast<uint64_t>(ga.box.numel()) *
                             core::dtype_size(in_.trainer.params[ga.param].dtype);
          // Queued before the projections that read it, on the same stream.
          if (Status s = copy_host_to_device_async(device_gbuf_.data() + (h - g.data()), h, n); !s)
            return s;
        }
      }
      rep.gather_s += since(tg);
      continue;
    }
    if (t.op == plan::Task::Op::kProject) {
      if (Status s = pump(); !s) return s;
      const plan::Project& p = plan_.projects[t.index];
      const auto [lo, hi] = staged(p);
      if (device && batch_mark >= 0 && ti <= batch_last) {  // queued with its batch's first
        ++rep.projects;
        produced.push_back({lo, hi, batch_mark, {}});
        continue;
      }
      // On the GPU, this projection and the next ones of the phase whose staging follows on
      // from it run as one batch: one assembly and one conversion launch, one copy out, one mark
      // (launches, not bytes, set the time of a small model's many projections).
      std::vector<const plan::Project*> batch{&p};
      uint64_t bhi = hi;
      size_t last = ti;
      if (device && one_copy(p)) {
        int64_t elems = p.box.numel();
        for (size_t j = ti + 1; j < tasks.size() && batch.size() < kBatchProjects; ++j) {
          if (tasks[j].op == plan::Task::Op::kWrite) continue;
          if (tasks[j].op != plan::Task::Op::kProject) break;
          const plan::Project& q = plan_.projects[tasks[j].index];
          const auto [qlo, qhi] = staged(q);
          if (qlo != bhi || !one_copy(q) || elems + q.box.numel() > kBatchElems) break;
          batch.push_back(&q);
          bhi = qhi;
          elems += q.box.numel();
          last = j;
        }
      }
      // On the CPU the earlier projections' writes go out now. On the GPU they stay queued
      // behind their marks, unless this batch's staging overlaps one of theirs.
      bool overlap = !device;
      for (const Produced& e : produced) overlap = overlap || (e.lo < bhi && lo < e.hi);
      if (overlap)
        if (Status fs = release(produced.size(), true, false); !fs) return fs;
      // Ring admission: wait for writes still reading this slot.
      const auto tr = Clock::now();
      while (!inflight.empty()) {
        bool busy = false;
        for (const Inflight& f : inflight) busy = busy || (f.lo < bhi && lo < f.hi);
        if (!busy) break;
        const Inflight f = inflight.front();
        inflight.pop_front();
        if (Status s = waited(f.batch); !s) return s;
        // Waited for (and forgotten by the engine): the end of the step must not wait again.
        batches.erase(std::find(batches.begin(), batches.end(), f.batch));
      }
      rep.ring_wait_s += since(tr);
      const auto& dp = in_.inference.params[plan_.dests[p.dest].param];
      auto res = [&](const plan::Project::Input& inp) -> plan::Held {
        if (inp.gather >= 0)
          return {plan_.gathers[inp.gather].box, collective_->gathered(inp.gather)};
        const int src = dp.parts.at(inp.part).src;
        auto it = layout_.by_param.find(src);
        if (it == layout_.by_param.end()) return {};
        return {layout_.shards[it->second].box, bound_.at(src).data};
      };
      if (debug_project_delay_ms_ > 0)  // test hook: a root slow to project (see create)
        std::this_thread::sleep_for(std::chrono::milliseconds(debug_project_delay_ms_));
      const auto tp = Clock::now();
      int mark = -1;
      if (device) {
        // On the GPU from the device shards or the device copy of the gather buffer, into
        // device staging; then the output (and scales) to the registered host staging.
        auto dres = [&](const plan::Project& q, const plan::Project::Input& inp) -> plan::Held {
          if (inp.gather >= 0)
            return {plan_.gathers[inp.gather].box,
                    device_gbuf_.data() +
                        (collective_->gathered(inp.gather) - collective_->buffer().data())};
          const int src = in_.inference.params[plan_.dests[q.dest].param].parts.at(inp.part).src;
          auto it = layout_.by_param.find(src);
          auto d = device_shard_.find(src);
          if (it == layout_.by_param.end() || d == device_shard_.end()) return {};
          return {layout_.shards[it->second].box, d->second};
        };
        Status s = project_cuda_batch(in_, plan_, batch, dres, device_staging_.data(),
                                      device_staging_.size(), scratch_, cuda_device_);
        // Outputs and scales in one copy when the scales follow the output (as planned, and
        // always in a batch of several); else the scales in a copy of their own.
        const bool one = one_copy(p);
        if (s)
          s = copy_device_to_host_async(staging_.data() + lo, device_staging_.data() + lo,
                                        one ? bhi - lo : p.out_bytes);
        if (s && !one)
          s = copy_device_to_host_async(staging_.data() + p.scale_off,
                                        device_staging_.data() + p.scale_off, hi - p.scale_off);
        // One mark per batch (kernels and copies), waited for when its writes go out.
        mark = static_cast<int>(marks++ % kMarks);
        batch_mark = mark;
        batch_last = last;
        if (s) s = proj_marks_.mark(static_cast<size_t>(mark));
        if (!s)
          return Status(s.code(),
                        fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
      } else if (Status s = plan::project_cpu(in_, plan_, p, res, staging_.data(), staging_.size());
                 !s) {
        return Status(s.code(),
                      fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
      }
      rep.project_s += since(tp);
      ++rep.projects;
      // At most kMarks - 1 batches in flight on the GPU besides this one: the oldest one's writes
      // go out now (a mark's slot is reused only once no projection waits for it).
      for (;;) {
        size_t groups = 0, oldest = 0;
        for (size_t k = 0; k < produced.size(); ++k)
          if (produced[k].mark >= 0 && (k == 0 || produced[k].mark != produced[k - 1].mark))
            ++groups;
        while (oldest < produced.size() && produced[oldest].mark == produced[0].mark) ++oldest;
        if (groups + 1 < kMarks) break;
        if (Status fs = release(oldest, true, false); !fs) return fs;
      }
      produced.push_back({lo, hi, mark, {}});
      continue;
    }
    const plan::Write& w = plan_.writes[t.index];
    const uint32_t r = plan_.dests[w.dest].receiver;
    if (!receivers_.count(r))
      return Status(Code::kInternal,
                    fmt::format("write {} goes to receiver {}, which rank {} never connected to",
                                t.index, r, rank_));
    GroupWrite g;
    if (w.project >= 0) {
      if (produced.empty())  // a plan invariant: a projection's writes follow it
        return Status(Code::kInternal,
                      fmt::format("write {} of projection {} comes before it in rank {}'s tasks",
                                  t.index, w.project, rank_));
      g.src = &staging_region_;
      g.src_off = w.src_off;
    } else {
      if (device && !mirrored_.count(w.src_param)) {
        // What is queued streams while this shard comes to the host.
        if (Status fs = release(produced.size(), false, true); !fs) return fs;
        if (Status s = mirror(w.src_param); !s) return s;
      }
      auto it = bound_.find(w.src_param);
      if (it == bound_.end())
        return invalid("write {} reads a shard rank {} does not hold", t.index, rank_);
      g.src = it->second.region;
      g.src_off = it->second.offset + w.src_off;
    }
    g.dst_off = w.dst_off;
    g.len = w.len;
    g.has_imm = true;  // peer, descriptor and immediate are bound at submission
    (w.project >= 0 ? produced.back().writes : direct)
        .push_back({g, r, w.dest, static_cast<uint8_t>(w.phase)});
    rep.bytes += w.len;
    ++rep.writes;
  }
  if (Status fs = release(produced.size(), true, false); !fs) return fs;
  if (Status r = await_ready(); !r) return r;  // a step without writes still waits for it
  if (device)  // nothing of this step may still read the gather buffer when members refill it
    if (Status s = cuda_sync(); !s) return s;
  if (Status s = collective_->finish(deadline); !s)  // pieces this rank sent to its roots
    return Status(s.code(), fmt::format("trainer rank {} step {}: {}", rank_, step, s.message()));
  const auto tw = Clock::now();
  for (uint64_t b : batches)
    if (Status s = waited(b); !s) return s;
  rep.write_s = since(tw);
  rep.mirror_s = mirror_s_;
  rep.total_s = since(t0);
  const transport::ProgressStats stats1 = engine_->stats();
  rep.post_s = static_cast<double>(stats1.post_ns - post0) * 1e-9;
  for (size_t n = 0; n < stats1.nic_bytes.size(); ++n) {
    const uint64_t before = n < stats0.nic_bytes.size() ? stats0.nic_bytes[n] : 0;
    rep.nic_gbps.push_back(static_cast<double>(stats1.nic_bytes[n] - before) / rep.total_s / 1e9);
  }
  return rep;
}

Result<std::unique_ptr<InferenceReceiver>> InferenceReceiver::create(
    const spec::Inputs& in, const plan::Plan& plan, uint32_t receiver,
    const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
    bool allocate) {
  if (receiver >= plan.receivers.size())
    return invalid("inference receiver {} is not in the plan ({} receivers)", receiver,
                   plan.receivers.size());
  std::unique_ptr<InferenceReceiver> r(new InferenceReceiver(in, plan));
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
    // GPU memory is registered as such: the NIC writes into it where the transport can
    // (dma-buf / peer memory, FI_HMEM), and says why not where it cannot.
    const auto kind = pointer_kind(data) == MemoryKind::kCuda ? transport::MemKind::kCuda
                                                              : transport::MemKind::kHost;
    auto reg = engine_->register_memory(data, bytes, kind);
    if (!reg)
      return Status(reg.status().code(),
                    fmt::format("bind_tensor('{}'): {}", name, reg.status().message()));
    regions_.push_back(*reg);
    bound_[d] = {static_cast<std::byte*>(data), &regions_.back()};
    bound_off_[d] = 0;
    return Status::ok();
  }
  return invalid("bind_tensor: receiver {} holds no {}'{}'", receiver_, scales ? "scales of " : "",
                 name);
}

std::byte* InferenceReceiver::tensor(uint32_t dest) {
  auto it = bound_.find(dest);
  return it == bound_.end() ? nullptr : it->second.first;
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
  Status s = counters_.wait(step, expect_, deadline);
  if (!s)
    return Status(s.code(), fmt::format("receiver {} (replica {} rank {}) generation {}: {}",
                                        receiver_, plan_.receivers[receiver_].replica,
                                        plan_.receivers[receiver_].rank, step, s.message()));
  WaitReport w;
  w.step = step;
  w.bytes = bytes_;
  for (const auto& e : expect_) w.imms += e.count;
  w.wait_s = since(t0);
  return w;
}

}  // namespace weightcast::exec
