// The fault-injecting Domain (fault_domain.h).
#include "fault_domain.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <sstream>

#include "weightcast/transport/imm.h"

namespace weightcast::transport {

namespace {

struct FaultSpec {
  uint64_t fail_post = 0, fail_completion = 0, drop_completion = 0, orphan_error = 0, fail_poll = 0,
           delay = 0, hold_from = 0, hold_count = 0, stall_peer = 0, reuse_peer = 0;
  bool reorder = false;
};

Result<FaultSpec> parse(const std::string& spec) {
  FaultSpec f;
  std::istringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    const std::string k = item.substr(0, eq),
                      v = eq == std::string::npos ? "" : item.substr(eq + 1);
    auto num = [&](uint64_t& out) -> Status {
      try {
        size_t used = 0;
        out = std::stoull(v, &used);
        if (used != v.size() || out == 0) throw std::invalid_argument(v);
      } catch (const std::exception&) {
        return invalid("faults '{}': {} needs a count >= 1, got '{}'", spec, k, v);
      }
      return Status::ok();
    };
    Status s;
    if (k == "fail_post")
      s = num(f.fail_post);
    else if (k == "fail_completion")
      s = num(f.fail_completion);
    else if (k == "drop_completion")
      s = num(f.drop_completion);
    else if (k == "orphan_error")
      s = num(f.orphan_error);
    else if (k == "fail_poll")
      s = num(f.fail_poll);
    else if (k == "delay")
      s = num(f.delay);
    else if (k == "stall_peer")
      s = num(f.stall_peer);
    else if (k == "reuse_peer")
      s = num(f.reuse_peer);
    else if (k == "reorder" && v.empty())
      f.reorder = true;
    else if (k == "hold_arrivals") {
      unsigned long long a = 0, b = 0;
      char extra = 0;
      if (std::sscanf(v.c_str(), "%llu:%llu%c", &a, &b, &extra) != 2 || a == 0 || b == 0)
        return invalid("faults '{}': hold_arrivals needs K:N (both >= 1), got '{}'", spec, v);
      f.hold_from = a;
      f.hold_count = b;
    } else {
      return invalid(
          "faults '{}': unknown fault '{}' (known: fail_post, fail_completion, drop_completion, "
          "orphan_error, fail_poll, delay, reorder, hold_arrivals, stall_peer, reuse_peer)",
          spec, item);
    }
    if (!s) return s;
  }
  return f;
}

class FaultDomain final : public Domain {
 public:
  FaultDomain(std::unique_ptr<Domain> real, FaultSpec f) : real_(std::move(real)), f_(f) {}
  const Capabilities& caps() const override { return real_->caps(); }
  std::vector<uint8_t> address() const override { return real_->address(); }
  Result<PeerId> connect(std::span<const uint8_t> a) override {
    auto p = real_->connect(a);
    if (!p) return p;
    ++connects_;
    if (connects_ == 1) first_ = *p;
    if (connects_ == f_.stall_peer) stalled_ = *p;
    if (connects_ == f_.reuse_peer && connects_ > 1) {  // verbs' QP slot, given a new process
      route_[*first_] = *p;
      return *first_;
    }
    return p;
  }
  Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) override {
    return real_->register_memory(base, len, kind);
  }
  Status deregister(const LocalMr& mr) override { return real_->deregister(mr); }
  Result<LocalMr> register_split(void* direct, MemKind kind, void* landing, uint64_t len) override {
    return real_->register_split(direct, kind, landing, len);
  }
  bool writes_direct(std::span<const uint8_t> a) const override { return real_->writes_direct(a); }

  Result<void*> device_window(PeerId peer, const RemoteKey& dst, uint64_t off,
                              uint64_t len) override {
    return real_->device_window(peer, dst, off, len);
  }
  PostResult post(std::span<const WriteOp> given) override {
    // A reused id's ops go to the peer connected last under it.
    std::vector<WriteOp> routed;
    if (!route_.empty()) {
      routed.assign(given.begin(), given.end());
      for (WriteOp& op : routed)
        if (auto r = route_.find(op.peer); r != route_.end()) op.peer = r->second;
    }
    std::span<const WriteOp> ops = route_.empty() ? given : std::span<const WriteOp>(routed);
    // A stalled peer's ops are refused for now (EAGAIN), forever: the ones before go out.
    if (stalled_)
      for (size_t i = 0; i < ops.size(); ++i)
        if (ops[i].peer == *stalled_) {
          if (i == 0) return PostResult{};
          return post_routed(ops.first(i));
        }
    return post_routed(ops);
  }
  PostResult post_routed(std::span<const WriteOp> ops) {
    // The op that must fail, if it is in this call: the ones before it go out for real.
    size_t stop = ops.size();
    if (f_.fail_post > posted_ && f_.fail_post - posted_ <= ops.size())
      stop = static_cast<size_t>(f_.fail_post - posted_ - 1);
    PostResult r = stop ? real_->post(ops.first(stop)) : PostResult{};
    posted_ += r.taken;
    if (r.error.is_ok() && r.taken == stop && stop < ops.size()) {
      r.error =
          Status(Code::kTransport, fmt::format("injected post failure (fail_post={}) on write {}",
                                               f_.fail_post, ops[stop].id));
      f_.fail_post = 0;  // once
    }
    return r;
  }

  Result<size_t> poll(std::span<Completion> out) override {
    ++polls_;
    std::vector<Completion> got(out.size());
    auto n = real_->poll(got);
    if (!n) return n;
    got.resize(*n);
    for (Completion& c : got) admit(std::move(c));
    // Delayed write completions whose time has come, then whatever is ready.
    while (!delayed_.empty() && delayed_.front().first <= polls_) {
      ready_.push_back(std::move(delayed_.front().second));
      delayed_.pop_front();
    }
    if (ready_.empty()) return size_t{0};
    if (f_.fail_poll && ++nonempty_polls_ == f_.fail_poll) {
      f_.fail_poll = 0;
      return Status(Code::kTransport, "injected completion queue failure (fail_poll)");
    }
    const size_t k = std::min(out.size(), ready_.size());
    if (f_.reorder) std::reverse(ready_.begin(), ready_.begin() + static_cast<long>(k));
    for (size_t i = 0; i < k; ++i) out[i] = std::move(ready_[i]);
    ready_.erase(ready_.begin(), ready_.begin() + static_cast<long>(k));
    return k;
  }

 private:
  void admit(Completion c) {
    if (c.kind == Completion::Kind::kImm) {
      ++arrivals_;
      const uint8_t gen = Imm::decode(c.imm).generation;
      if (f_.hold_count && arrivals_ >= f_.hold_from && arrivals_ < f_.hold_from + f_.hold_count) {
        held_gen_ = gen;
        held_.push_back(std::move(c));
        return;
      }
      ready_.push_back(std::move(c));
      if (!held_.empty() && gen != held_gen_) {  // the retry began: now the late ones land
        for (Completion& h : held_) ready_.push_back(std::move(h));
        held_.clear();
      }
      return;
    }
    if (c.kind == Completion::Kind::kWriteDone) {
      ++completions_;
      if (completions_ == f_.drop_completion) return;
      if (completions_ == f_.fail_completion) {
        c.kind = Completion::Kind::kError;
        c.status =
            Status(Code::kRemote, fmt::format("write {} failed: injected (fail_completion={})",
                                              c.id, f_.fail_completion));
      }
      if (completions_ == f_.orphan_error) {
        Completion o;
        o.kind = Completion::Kind::kError;
        o.id = ~uint64_t{0} - 1;
        o.status = Status(Code::kRemote, "injected error completion for an op nobody posted");
        ready_.push_back(std::move(o));
      }
      if (f_.delay) {
        delayed_.emplace_back(polls_ + f_.delay, std::move(c));
        return;
      }
    }
    ready_.push_back(std::move(c));
  }

  std::unique_ptr<Domain> real_;
  FaultSpec f_;
  uint64_t posted_ = 0, polls_ = 0, nonempty_polls_ = 0, completions_ = 0, arrivals_ = 0;
  uint64_t connects_ = 0;
  std::optional<PeerId> stalled_, first_;  // stall_peer's connection; the first one
  std::map<PeerId, PeerId> route_;         // reuse_peer: the reused id -> the real peer
  uint8_t held_gen_ = 0;
  std::vector<Completion> held_;
  std::deque<Completion> ready_;
  std::deque<std::pair<uint64_t, Completion>> delayed_;
};

}  // namespace

Result<std::unique_ptr<Domain>> wrap_with_faults(std::unique_ptr<Domain> real,
                                                 const std::string& spec) {
  auto f = parse(spec);
  if (!f) return f.status();
  return std::unique_ptr<Domain>(new FaultDomain(std::move(real), *f));
}

}  // namespace weightcast::transport
