// The progress thread's loop: commands, striping, posting with back-pressure, completions.
#include "weightcast/transport/progress.h"

#include <fmt/format.h>

#include <algorithm>

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
  return call<Result<uint32_t>>([this, copy]() -> Result<uint32_t> {
    auto p = group_->connect(copy);
    if (!p) return p;
    // A NIC connection of an earlier peer of another address given to this one: the backend
    // reused it for a new process (verbs: the peer's QP slot, reset on the way). What was
    // posted to the old process is gone without completions, and what is queued for it must
    // not reach the new one.
    for (const auto& [h, addr] : peer_address_) {
      if (addr == copy) continue;  // the same process linked again: its connection is kept
      bool shared = false;
      for (size_t n = 0; n < nic_count_ && !shared; ++n)
        shared = group_->nic_peer(h, n) == group_->nic_peer(*p, n);
      if (shared) discard_peer(h);
    }
    peer_address_[*p] = copy;
    return p;
  });
}

void ProgressEngine::discard_peer(uint32_t peer) {
  std::set<uint64_t> gone;
  {
    std::lock_guard<std::mutex> lk(batch_mu_);
    const std::string e = fmt::format(
        "discarded: the connection to group peer {} was set up again for a new process", peer);
    for (auto sb = shard_batch_.begin(); sb != shard_batch_.end();) {
      if (sb->second.peer != peer) {
        ++sb;
        continue;
      }
      gone.insert(sb->first);
      if (auto b = batches_.find(sb->second.batch); b != batches_.end()) shard_done(b, peer, &e);
      sb = shard_batch_.erase(sb);
    }
    if (!gone.empty()) batch_cv_.notify_all();
  }
  for (auto& q : pending_)
    q.erase(
        std::remove_if(q.begin(), q.end(), [&](const WriteOp& op) { return gone.count(op.id); }),
        q.end());
}
Result<Region> ProgressEngine::register_memory(void* base, uint64_t len, MemKind kind) {
  return call<Result<Region>>([=, this] { return group_->register_memory(base, len, kind); });
}
Result<Region> ProgressEngine::register_split(void* direct, MemKind kind, void* landing,
                                              uint64_t len) {
  return call<Result<Region>>(
      [=, this] { return group_->register_split(direct, kind, landing, len); });
}
bool ProgressEngine::writes_direct(std::span<const uint8_t> peer) {
  std::vector<uint8_t> copy(peer.begin(), peer.end());
  return call<bool>([this, copy] { return group_->writes_direct(copy); });
}
Status ProgressEngine::deregister(const Region& r) {
  return call<Status>([&, this] { return group_->deregister(r); });
}
Result<void*> ProgressEngine::device_window(uint32_t peer, const RemoteRegion& dst, uint64_t off,
                                            uint64_t len) {
  return call<Result<void*>>([&, this]() -> Result<void*> {
    if (dst.per_nic.empty()) return invalid("device window: the region has no keys");
    return group_->nic(0).device_window(group_->nic_peer(peer, 0), dst.per_nic[0], off, len);
  });
}

uint64_t ProgressEngine::submit(std::vector<GroupWrite> writes) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lk(batch_mu_);
    id = next_batch_++;
    Batch& b = batches_[id];
    b.remaining = writes.size() * nic_count_;
    for (const GroupWrite& w : writes) b.out_by_peer[w.peer] += nic_count_;
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

Status ProgressEngine::wait(uint64_t batch, Clock::time_point deadline,
                            std::vector<uint32_t>* bad_peers) {
  std::unique_lock<std::mutex> lk(batch_mu_);
  auto it = batches_.find(batch);
  if (it == batches_.end()) return invalid("wait: unknown batch {}", batch);
  auto name_peers = [&](const Batch& b) {
    if (!bad_peers) return;
    std::set<uint32_t> bad = b.failed_peers;
    for (const auto& [p, n] : b.out_by_peer)
      if (n) bad.insert(p);
    bad_peers->assign(bad.begin(), bad.end());
  };
  // Done, or failed: a shard's error fails the batch at once (its other shards may still be in
  // flight: drain() fences them).
  const bool settled = batch_cv_.wait_until(
      lk, deadline, [&] { return it->second.remaining == 0 || !it->second.errors.empty(); });
  Batch& b = it->second;
  const std::string first = b.errors.empty() ? "" : b.errors.front();
  const size_t failed = b.errors.size();
  if (!settled || failed) name_peers(b);
  if (!settled) {
    const uint64_t left = b.remaining;
    b.abandoned = true;
    return Status(Code::kTimeout,
                  fmt::format("write batch {}: {} of its NIC shards still outstanding at the "
                              "deadline{}{}",
                              batch, left, stats_.poll_errors ? "; completion queue error: " : "",
                              stats_.last_poll_error));
  }
  if (b.remaining == 0) {
    batches_.erase(it);
  } else {
    b.abandoned = true;
  }
  if (failed)
    return Status(Code::kRemote, fmt::format("write batch {}: {} shard(s) failed; first: {}", batch,
                                             failed, first));
  return Status::ok();
}

bool ProgressEngine::probe(uint64_t batch, Status& status) {
  {
    std::lock_guard<std::mutex> lk(batch_mu_);
    auto it = batches_.find(batch);
    if (it != batches_.end() && it->second.remaining != 0 && it->second.errors.empty())
      return false;
  }
  status = wait(batch, Clock::now());
  return true;
}

Status ProgressEngine::drain(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lk(batch_mu_);
  auto left = [&] {
    uint64_t n = 0;
    for (const auto& [id, b] : batches_) n += b.remaining;
    return n;
  };
  if (!batch_cv_.wait_until(lk, deadline, [&] { return left() == 0; })) {
    for (auto& [id, b] : batches_) b.abandoned = true;
    return Status(
        Code::kTimeout,
        fmt::format("{} NIC shard(s) of earlier writes still in flight at the deadline", left()));
  }
  batches_.clear();
  return Status::ok();
}

uint64_t ProgressEngine::outstanding() const {
  std::lock_guard<std::mutex> lk(batch_mu_);
  uint64_t n = 0;
  for (const auto& [id, b] : batches_) n += b.remaining;
  return n;
}

ProgressStats ProgressEngine::stats() const {
  std::lock_guard<std::mutex> lk(batch_mu_);
  return stats_;
}

void ProgressEngine::shard_done(std::map<uint64_t, Batch>::iterator it, uint32_t peer,
                                const std::string* error) {
  if (auto p = it->second.out_by_peer.find(peer); p != it->second.out_by_peer.end() && p->second)
    --p->second;
  if (error) {
    it->second.errors.push_back(*error);
    it->second.failed_peers.insert(peer);
    ++stats_.errors;
  } else {
    ++stats_.shards_done;
  }
  if (--it->second.remaining == 0 && it->second.abandoned) batches_.erase(it);
}

// Stripes every write of a batch over the NICs; each shard carries the immediate.
void ProgressEngine::queue_batch(uint64_t batch, const std::vector<GroupWrite>& writes) {
  for (const GroupWrite& w : writes) {
    if ((!w.in_place && !within(w.src_off, w.len, w.src->len)) ||
        !within(w.dst_off, w.len, w.dst->len)) {
      // Refused before any offset is composed (a wrapped sum could land inside the region).
      const std::string e = fmt::format(
          "a {} B write at source offset {} / destination offset {} runs past its regions "
          "({} B / {} B)",
          w.len, w.src_off, w.dst_off, w.src ? w.src->len : 0, w.dst->len);
      std::lock_guard<std::mutex> lk(batch_mu_);
      if (auto b = batches_.find(batch); b != batches_.end())
        for (size_t n = 0; n < nic_count_; ++n) shard_done(b, w.peer, &e);
      batch_cv_.notify_all();
      continue;
    }
    const auto shards = stripe(w.len, static_cast<uint32_t>(nic_count_));
    for (size_t n = 0; n < nic_count_; ++n) {
      // A shard longer than the NIC's largest message goes as several writes on one
      // connection; only the last carries the immediate, so the receiver's count is
      // unchanged. That is only sound where writes land in order (RC QPs, FI_ORDER_WAW).
      const uint64_t pieces = shards[n].len == 0 || w.in_place
                                  ? 1
                                  : (shards[n].len + piece_max_[n] - 1) / piece_max_[n];
      if (pieces > 1) {
        std::lock_guard<std::mutex> lk(batch_mu_);
        auto b = batches_.find(batch);
        if (!ordered_[n]) {
          if (b != batches_.end()) {
            const std::string e = fmt::format(
                "a {} B write exceeds NIC {}'s largest message ({} B) and its provider does not "
                "keep writes in order, so it cannot be split: lower the plan's max_write_bytes",
                shards[n].len, n, piece_max_[n]);
            shard_done(b, w.peer, &e);
          }
          batch_cv_.notify_all();
          continue;
        }
        if (b != batches_.end()) {
          b->second.remaining += pieces - 1;
          b->second.out_by_peer[w.peer] += pieces - 1;
        }
      }
      for (uint64_t k = 0; k < pieces; ++k) {
        const uint64_t off = k * piece_max_[n];
        WriteOp op;
        op.id = next_shard_++;
        op.src = w.src ? &w.src->per_nic[n] : nullptr;
        op.src_off = w.src_off + shards[n].off + off;
        op.peer = group_->nic_peer(w.peer, n);
        op.dst = w.dst->per_nic[n];
        op.dst_off = w.dst_off + shards[n].off + off;
        op.len = w.in_place ? shards[n].len : std::min(piece_max_[n], shards[n].len - off);
        op.has_imm = w.has_imm && k + 1 == pieces;
        op.imm = w.imm;
        op.in_place = w.in_place;
        shard_batch_[op.id] = {batch, w.peer};
        pending_[n].push_back(op);
      }
    }
  }
}

// Posts what NIC n has queued. post() says exactly how many ops went out before an error: those
// are in flight, the refused one fails its batch (it never went out, so it is not retried and
// not counted twice), and the rest stay queued. A peer whose op is refused for now (EAGAIN: its
// connection is busy, being set up, or its process is gone) holds back only its own ops: the
// others' go on (per-peer order kept), so one dead peer never stalls the writes to the living.
// Ops of batches whose waiter gave up are dropped unposted (they never went out: no memory of
// theirs is touched), so a drain does not wait on writes that can never complete.
void ProgressEngine::post_nic(size_t n, bool& busy) {
  auto& q = pending_[n];
  std::set<PeerId> blocked;          // peers refused for now this round
  std::deque<WriteOp> held;          // their ops, in order, back in front at the end
  constexpr size_t kMaxBlocked = 8;  // past this many, the NIC itself is full: wait a round
  while (!q.empty()) {
    if (!blocked.empty()) {  // set the blocked peers' ops aside, in order
      while (!q.empty() && blocked.count(q.front().peer)) {
        held.push_back(q.front());
        q.pop_front();
      }
      if (q.empty()) break;
    }
    size_t chunk = 0;
    while (chunk < std::min<size_t>(q.size(), 32) && !blocked.count(q[chunk].peer)) ++chunk;
    std::vector<WriteOp> ops(q.begin(), q.begin() + static_cast<long>(chunk));
    const auto tp = Clock::now();
    const PostResult r = group_->nic(n).post(ops);
    const auto post_ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - tp).count());
    const size_t t = std::min(r.taken, chunk);
    const bool refused = !r.error.is_ok() && t < chunk;  // ops[t] was refused
    bool dropped = false;  // ops[t] was for a batch given up: dropped, not retried
    {
      std::lock_guard<std::mutex> lk(batch_mu_);
      stats_.shards_posted += t;
      stats_.post_ns += post_ns;
      if (stats_.nic_bytes.size() < nic_count_) stats_.nic_bytes.resize(nic_count_, 0);
      for (size_t k = 0; k < t; ++k) stats_.nic_bytes[n] += ops[k].len;
      if (t < chunk) {
        const WriteOp& bad = ops[t];
        auto sb = shard_batch_.find(bad.id);
        auto b = sb == shard_batch_.end() ? batches_.end() : batches_.find(sb->second.batch);
        dropped = !refused && b != batches_.end() && b->second.abandoned;
        if (refused || dropped) {
          const std::string e = refused
                                    ? fmt::format("NIC {}: {}", n, r.error.message())
                                    : fmt::format(
                                          "NIC {}: not posted (its peer refused it until the batch "
                                          "was given up)",
                                          n);
          if (b != batches_.end()) shard_done(b, sb->second.peer, &e);
          if (sb != shard_batch_.end()) shard_batch_.erase(sb);
          batch_cv_.notify_all();
        } else {
          ++stats_.eagain;
        }
      }
    }
    q.erase(q.begin(), q.begin() + static_cast<long>(t + (refused || dropped ? 1 : 0)));
    busy = busy || t > 0 || refused || dropped;
    if (t < chunk && !refused && !dropped) {  // back-pressure from this op's peer
      blocked.insert(ops[t].peer);
      if (blocked.size() >= kMaxBlocked) break;  // progress completions, then retry
    }
  }
  for (auto it = held.rbegin(); it != held.rend(); ++it) q.push_front(*it);
}

void ProgressEngine::poll_nic(size_t n, std::vector<Completion>& comps, bool& busy) {
  auto got = group_->nic(n).poll(comps);
  if (!got) {  // the queue itself failed: say so in every report until it recovers
    std::lock_guard<std::mutex> lk(batch_mu_);
    ++stats_.poll_errors;
    stats_.last_poll_error = fmt::format("NIC {}: {}", n, got.status().message());
    batch_cv_.notify_all();
    return;
  }
  if (*got == 0) return;
  busy = true;
  bool settled = false;
  std::lock_guard<std::mutex> lk(batch_mu_);
  for (size_t i = 0; i < *got; ++i) {
    const Completion& c = comps[i];
    if (c.kind == Completion::Kind::kImm) {
      ++stats_.imms;
      counters_->arrive(c.imm);
      continue;
    }
    auto sb = shard_batch_.find(c.id);
    if (sb == shard_batch_.end()) {
      if (c.kind == Completion::Kind::kError) {  // not ours (or reported twice): never silent
        ++stats_.orphan_errors;
        stats_.last_orphan_error = fmt::format("NIC {}: {}", n, c.status.message());
      }
      continue;
    }
    auto b = batches_.find(sb->second.batch);
    const uint32_t peer = sb->second.peer;
    shard_batch_.erase(sb);
    if (b == batches_.end()) continue;
    const std::string e = c.kind == Completion::Kind::kError
                              ? fmt::format("NIC {}: {}", n, c.status.message())
                              : std::string();
    settled = settled || c.kind == Completion::Kind::kError || b->second.remaining == 1;
    shard_done(b, peer, c.kind == Completion::Kind::kError ? &e : nullptr);
  }
  if (settled) batch_cv_.notify_all();
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
    for (auto& [batch, writes] : in) {
      queue_batch(batch, writes);
      busy = true;
    }
    for (size_t n = 0; n < nic_count_; ++n) post_nic(n, busy);
    for (size_t n = 0; n < nic_count_; ++n) poll_nic(n, comps, busy);
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
