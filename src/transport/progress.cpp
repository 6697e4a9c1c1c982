// The progress thread's loop: commands, striping, posting with back-pressure, completions.
#include "weightcast/transport/progress.h"

#include <fmt/format.h>

namespace weightcast::transport {

Result<std::unique_ptr<ProgressEngine>> ProgressEngine::start(const std::vector<DomainConfig>& nics,
                                                              ImmCounters* counters) {
  auto g = NicGroup::open(nics);
  if (!g) return g.status();
  std::unique_ptr<ProgressEngine> e(new ProgressEngine());
  e->group_ = std::move(g).value();
  e->nic_count_ = e->group_->size();
  e->counters_ = counters;
  e->pending_.resize(e->nic_count_);
  for (size_t n = 0; n < e->nic_count_; ++n) {
    const Capabilities& c = e->group_->nic(n).caps();
    uint64_t piece = nics[n].max_write ? nics[n].max_write : UINT64_MAX;
    if (c.max_msg) piece = std::min(piece, c.max_msg);
    e->piece_max_.push_back(piece);
    e->ordered_.push_back(c.ordered_writes);
  }
  e->thread_ = std::thread([p = e.get()] { p->loop(); });
  return e;
}

ProgressEngine::~ProgressEngine() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

template <typename T>
T ProgressEngine::call(std::function<T()> fn) {
  auto task = std::make_shared<std::packaged_task<T()>>(std::move(fn));
  auto fut = task->get_future();
  {
    std::lock_guard<std::mutex> lk(cmd_mu_);
    commands_.push_back([task] { (*task)(); });
  }
  return fut.get();
}

Capabilities ProgressEngine::caps() {
  return call<Capabilities>([this] { return group_->nic(0).caps(); });
}
std::vector<uint8_t> ProgressEngine::address() {
  return call<std::vector<uint8_t>>([this] { return group_->address(); });
}
Result<uint32_t> ProgressEngine::connect(std::span<const uint8_t> peer) {
  std::vector<uint8_t> copy(peer.begin(), peer.end());
  return call<Result<uint32_t>>([this, copy] { return group_->connect(copy); });
}
Result<Region> ProgressEngine::register_memory(void* base, uint64_t len, MemKind kind) {
  return call<Result<Region>>([=, this] { return group_->register_memory(base, len, kind); });
}
Status ProgressEngine::deregister(const Region& r) {
  return call<Status>([&, this] { return group_->deregister(r); });
}

uint64_t ProgressEngine::submit(std::vector<GroupWrite> writes) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lk(batch_mu_);
    id = next_batch_++;
    batches_[id].remaining = writes.size() * nic_count_;
    stats_.writes += writes.size();
  }
  if (writes.empty()) {
    batch_cv_.notify_all();
    return id;
  }
  std::lock_guard<std::mutex> lk(cmd_mu_);
  incoming_.emplace_back(id, std::move(writes));
  return id;
}

Status ProgressEngine::wait(uint64_t batch, Clock::time_point deadline) {
  std::unique_lock<std::mutex> lk(batch_mu_);
  auto it = batches_.find(batch);
  if (it == batches_.end()) return invalid("wait: unknown batch {}", batch);
  const bool done = batch_cv_.wait_until(lk, deadline, [&] { return it->second.remaining == 0; });
  Batch b = it->second;
  if (!done) {
    return Status(Code::kTimeout,
                  fmt::format("write batch {}: {} of its NIC shards still outstanding at "
                              "the deadline{}{}",
                              batch, b.remaining, b.errors.empty() ? "" : "; errors: ",
                              b.errors.empty() ? "" : b.errors.front()));
  }
  batches_.erase(it);
  if (!b.errors.empty())
    return Status(Code::kRemote, fmt::format("write batch {}: {} shard(s) failed; first: {}", batch,
                                             b.errors.size(), b.errors.front()));
  return Status::ok();
}

ProgressStats ProgressEngine::stats() const {
  std::lock_guard<std::mutex> lk(batch_mu_);
  return stats_;
}

void ProgressEngine::loop() {
  std::vector<Completion> comps(64);
  int idle = 0;
  while (!stop_) {
    bool busy = false;
    std::deque<std::function<void()>> cmds;
    std::deque<std::pair<uint64_t, std::vector<GroupWrite>>> in;
    {
      std::lock_guard<std::mutex> lk(cmd_mu_);
      cmds.swap(commands_);
      in.swap(incoming_);
    }
    for (auto& c : cmds) c();
    // Stripe every write over the NICs; each shard carries the immediate.
    for (auto& [batch, writes] : in) {
      for (const GroupWrite& w : writes) {
        const auto shards = stripe(w.len, static_cast<uint32_t>(nic_count_));
        for (size_t n = 0; n < nic_count_; ++n) {
          // A shard longer than the NIC's largest message goes as several writes on one
          // connection; only the last carries the immediate, so the receiver's count is
          // unchanged. That is only sound where writes land in order (RC QPs, FI_ORDER_WAW).
          const uint64_t pieces =
              shards[n].len == 0 ? 1 : (shards[n].len + piece_max_[n] - 1) / piece_max_[n];
          if (pieces > 1) {
            std::lock_guard<std::mutex> lk(batch_mu_);
            auto b = batches_.find(batch);
            if (!ordered_[n]) {
              if (b != batches_.end()) {
                b->second.errors.push_back(fmt::format(
                    "a {} B write exceeds NIC {}'s largest message ({} B) and its provider does "
                    "not keep writes in order, so it cannot be split: lower the plan's "
                    "max_write_bytes",
                    shards[n].len, n, piece_max_[n]));
                --b->second.remaining;
              }
              batch_cv_.notify_all();
              continue;
            }
            if (b != batches_.end()) b->second.remaining += pieces - 1;
          }
          for (uint64_t k = 0; k < pieces; ++k) {
            const uint64_t off = k * piece_max_[n];
            WriteOp op;
            op.id = next_shard_++;
            op.src = &w.src->per_nic[n];
            op.src_off = w.src_off + shards[n].off + off;
            op.peer = group_->nic_peer(w.peer, n);
            op.dst = w.dst->per_nic[n];
            op.dst_off = w.dst_off + shards[n].off + off;
            op.len = std::min(piece_max_[n], shards[n].len - off);
            op.has_imm = w.has_imm && k + 1 == pieces;
            op.imm = w.imm;
            shard_batch_[op.id] = batch;
            pending_[n].push_back(op);
          }
        }
      }
      busy = true;
    }
    for (size_t n = 0; n < nic_count_; ++n) {
      auto& q = pending_[n];
      while (!q.empty()) {
        const size_t chunk = std::min<size_t>(q.size(), 32);
        std::vector<WriteOp> ops(q.begin(), q.begin() + static_cast<long>(chunk));
        const auto tp = Clock::now();
        auto took = group_->nic(n).post(ops);
        const auto post_ns = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - tp).count());
        size_t t = took ? *took : 0;
        if (!took) {  // a post error fails that op's batch; drop it and go on
          std::lock_guard<std::mutex> lk(batch_mu_);
          auto b = batches_.find(shard_batch_[q.front().id]);
          if (b != batches_.end()) {
            b->second.errors.push_back(took.status().message());
            --b->second.remaining;
          }
          ++stats_.errors;
          shard_batch_.erase(q.front().id);
          q.pop_front();
          batch_cv_.notify_all();
          continue;
        }
        {
          std::lock_guard<std::mutex> lk(batch_mu_);
          stats_.shards_posted += t;
          stats_.post_ns += post_ns;
          if (stats_.nic_bytes.size() < nic_count_) stats_.nic_bytes.resize(nic_count_, 0);
          for (size_t k = 0; k < t; ++k) stats_.nic_bytes[n] += ops[k].len;
          if (t < chunk) ++stats_.eagain;
        }
        q.erase(q.begin(), q.begin() + static_cast<long>(t));
        busy = busy || t > 0;
        if (t < chunk) break;  // back-pressure: progress completions, then retry
      }
    }
    for (size_t n = 0; n < nic_count_; ++n) {
      auto got = group_->nic(n).poll(comps);
      if (!got || *got == 0) continue;
      busy = true;
      bool finished = false;
      std::lock_guard<std::mutex> lk(batch_mu_);
      for (size_t i = 0; i < *got; ++i) {
        const Completion& c = comps[i];
        if (c.kind == Completion::Kind::kImm) {
          ++stats_.imms;
          counters_->arrive(c.imm);
          continue;
        }
        auto sb = shard_batch_.find(c.id);
        if (sb == shard_batch_.end()) continue;
        auto b = batches_.find(sb->second);
        shard_batch_.erase(sb);
        if (b == batches_.end()) continue;
        if (c.kind == Completion::Kind::kError) {
          b->second.errors.push_back(c.status.message());
          ++stats_.errors;
        } else {
          ++stats_.shards_done;
        }
        finished = --b->second.remaining == 0 || finished;
      }
      if (finished) batch_cv_.notify_all();
    }
    // Writes in flight: keep polling (on manual-progress providers polling is what moves the
    // data, on both sides). Idle for a while: yield, then sleep briefly, so an idle GPU's thread
    // does not eat a core; a receiver's thread wakes within ~20 us.
    bool inflight = !shard_batch_.empty();
    if (busy) {
      idle = 0;
    } else if (inflight) {
      idle = 0;
      std::this_thread::yield();  // waiting on the wire: let other GPUs' threads run
    } else if (++idle > 4096) {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace weightcast::transport
