// The mirror stage (executor.h, ShardMirror).
#include <fmt/format.h>

#include "weightcast/exec/executor.h"

namespace weightcast::exec {

Status ShardMirror::init(int device, std::vector<int> order, std::set<int> host_read,
                         Lookup lookup) {
  order_ = std::move(order);
  host_read_ = std::move(host_read);
  lookup_ = std::move(lookup);
  for (size_t i = 0; i < order_.size(); ++i) slot_[order_[i]] = i;
  auto q = CopyQueue::create(device, order_.size());
  if (!q) return q.status();
  queue_ = std::move(q).value();
  enabled_ = true;
  return Status::ok();
}

Status ShardMirror::queue(int param) {
  auto c = lookup_(param);
  if (!c) return c.status();
  if (Status st = queue_.to_host(slot_.at(param), c->host, c->device, c->bytes); !st)
    return Status(st.code(), fmt::format("step {}: copying '{}' to the host: {}", step_, c->name,
                                         st.message()));
  queued_.insert(param);
  return Status::ok();
}

Status ShardMirror::start_step(uint8_t step, const std::function<bool(int)>& bound) {
  if (!enabled_) return Status::ok();
  step_ = step;
  seconds_ = 0;
  done_.clear();
  queued_.clear();
  for (int param : order_)
    if (bound(param))
      if (Status s = queue(param); !s) return s;
  return Status::ok();
}

Status ShardMirror::wait(int param) {
  if (!enabled_ || !host_read_.count(param) || done_.count(param)) return Status::ok();
  const auto t0 = Clock::now();
  if (!queued_.count(param))
    if (Status st = queue(param); !st) return st;
  if (Status st = queue_.wait(slot_.at(param)); !st) {
    auto c = lookup_(param);
    return Status(st.code(), fmt::format("step {}: copying '{}' to the host: {}", step_,
                                         c ? c->name : std::to_string(param), st.message()));
  }
  done_.insert(param);
  seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  return Status::ok();
}

bool ShardMirror::done(int param) const {
  return !enabled_ || !host_read_.count(param) || done_.count(param);
}

}  // namespace weightcast::exec
