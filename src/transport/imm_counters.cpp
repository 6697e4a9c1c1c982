// Credit counting and the deadline-bounded barrier.
#include "weightcast/transport/imm_counters.h"

#include <fmt/format.h>

#include <algorithm>

namespace weightcast::transport {

void ImmCounters::begin_generation(uint8_t generation) {
  std::lock_guard<std::mutex> lk(mu_);
  generation_ = generation;
  for (auto it = credits_.begin(); it != credits_.end();)
    it = generation_diff(std::get<0>(it->first), generation) < 0 ? credits_.erase(it)
                                                                 : std::next(it);
}

uint8_t ImmCounters::generation() const {
  std::lock_guard<std::mutex> lk(mu_);
  return generation_;
}

void ImmCounters::arrive(uint32_t imm) {
  const Imm d = Imm::decode(imm);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (generation_diff(d.generation, generation_) < 0) {
      ++stale_;
      return;
    }
    ++credits_[{d.generation, d.phase, d.sender}];
  }
  cv_.notify_all();
}

Status ImmCounters::wait(uint8_t generation, const std::vector<Expect>& expect,
                         Clock::time_point deadline) {
  std::vector<bool> done{false};
  auto r = wait_any(generation, {expect}, done, deadline);
  return r ? Status::ok() : r.status();
}

Result<size_t> ImmCounters::wait_any(uint8_t generation,
                                     const std::vector<std::vector<Expect>>& groups,
                                     std::vector<bool>& done, Clock::time_point deadline) {
  std::unique_lock<std::mutex> lk(mu_);
  done.resize(groups.size(), false);
  auto have = [&](const Expect& e) {
    auto it = credits_.find({generation, e.phase, e.sender});
    return it == credits_.end() ? uint64_t{0} : it->second;
  };
  auto met = [&](const std::vector<Expect>& g) {
    for (const Expect& e : g)
      if (have(e) < e.count) return false;
    return true;
  };
  auto ready = [&]() -> size_t {
    for (size_t i = 0; i < groups.size(); ++i)
      if (!done[i] && met(groups[i])) return i;
    return groups.size();
  };
  // Expected senders that aborted this generation (their push failed): no use waiting on.
  auto aborted = [&] {
    std::vector<uint16_t> out;
    for (size_t i = 0; i < groups.size(); ++i)
      for (const Expect& e : groups[i])
        if (!done[i] && credits_.count({generation, Imm::kAbortPhase, e.sender}) &&
            std::find(out.begin(), out.end(), e.sender) == out.end())
          out.push_back(e.sender);
    return out;
  };
  const bool settled =
      cv_.wait_until(lk, deadline, [&] { return ready() < groups.size() || !aborted().empty(); });
  const size_t g = ready();
  if (settled && g == groups.size()) {
    const auto who = aborted();
    std::string names;
    for (uint16_t s : who) names += fmt::format("{}{}", names.empty() ? "" : ", ", s);
    return Status(Code::kRemote,
                  fmt::format("generation {}: sender(s) {} aborted their attempt (their push "
                              "failed); retry the step",
                              generation, names));
  }
  if (!settled) {
    std::string missing;
    int listed = 0;
    for (size_t i = 0; i < groups.size(); ++i)
      for (const Expect& e : groups[i]) {
        if (done[i] || have(e) >= e.count) continue;
        if (listed++ < 16)
          missing += fmt::format("{}sender {} (phase {}: {} of {} imms)",
                                 missing.empty() ? "" : ", ", e.sender, e.phase, have(e), e.count);
      }
    if (listed > 16) missing += fmt::format(" and {} more", listed - 16);
    return Status(Code::kTimeout, fmt::format("imm barrier of generation {} timed out; missing: {}",
                                              generation, missing));
  }
  for (const Expect& e : groups[g]) {
    auto it = credits_.find({generation, e.phase, e.sender});
    if (e.count == 0) continue;
    it->second -= e.count;
    if (it->second == 0) credits_.erase(it);
  }
  done[g] = true;
  return g;
}

uint64_t ImmCounters::stale() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stale_;
}

uint64_t ImmCounters::count(uint8_t generation, uint8_t phase, uint16_t sender) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = credits_.find({generation, phase, sender});
  return it == credits_.end() ? 0 : it->second;
}

}  // namespace weightcast::transport
