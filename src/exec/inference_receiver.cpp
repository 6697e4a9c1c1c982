// The inference side's executor: creation, binding tensors (directly or staged), and the
// staged copies into GPU tensors, and publishing its descriptors.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

#include "weightcast/exec/executor.h"
#include "weightcast/plan/part.h"
#include "weightcast/session/keys.h"

namespace weightcast::exec {

namespace {
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

// The NICs close (and deregister every region) before any registered memory is freed.
InferenceReceiver::~InferenceReceiver() { engine_.reset(); }

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
  // On the hybrid backend, same-host senders write the tensor itself.
  const bool split = engine_->caps().split_regions;
  auto reg = split ? engine_->register_split(
                         data, cuda ? transport::MemKind::kCuda : transport::MemKind::kHost,
                         buf->data(), bytes)
                   : engine_->register_memory(buf->data(), bytes, transport::MemKind::kHost);
  if (!reg)
    return Status(reg.status().code(),
                  fmt::format("bind_tensor('{}'): staging area: {}", name, reg.status().message()));
  regions_.push_back(*reg);
  Staged& st = staged_[d];
  st.target = static_cast<std::byte*>(data);
  st.landing = std::move(buf).value();
  st.cuda = cuda;
  st.split = split;
  split_ = split_ || split;
  if (split) (cuda ? direct_gpu_ : direct_host_) = true;
  bound_[d] = {static_cast<std::byte*>(data), &regions_.back()};
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
  if (Status s = rdv_->put(session::keys::receiver_tensors(receiver_, incarnation_),
                           serialize_descriptors(descs));
      !s)
    return s;
  return rdv_->put(session::keys::receiver_address(receiver_, incarnation_), engine_->address());
}

void InferenceReceiver::begin(uint8_t generation) { counters_.begin_generation(generation); }

Status InferenceReceiver::connect_senders(std::span<const uint32_t> incarnations,
                                          Clock::time_point deadline) {
  if (!watches_senders()) return Status::ok();
  for (auto& [s, connected] : senders_) {
    const uint32_t inc = s < incarnations.size() ? incarnations[s] : 0;
    if (connected == static_cast<int64_t>(inc)) continue;
    auto addr = rdv_->get(session::keys::sender_address(s, inc), deadline);
    if (!addr)
      return Status(addr.status().code(), fmt::format("receiver {}: sender {}: {}", receiver_, s,
                                                      addr.status().message()));
    if (both_ends_) {
      auto peer = engine_->connect(*addr);
      if (!peer) return peer.status();
    }
    if (split_) direct_[s] = engine_->writes_direct(*addr);
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
      if (split_) {  // a direct writer wrote the split tensors themselves
        const uint16_t sender = groups_[*g].front().sender;
        auto d = direct_.find(sender);
        if (d == direct_.end())
          return named(
              invalid("split tensors, and sender {}'s link unknown: connect_senders() "
                      "first",
                      sender));
        if (d->second) continue;
      }
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
