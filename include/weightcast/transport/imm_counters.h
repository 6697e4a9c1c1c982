// The receiver's barrier over immediate-data counters. Arrivals are credits per
// (generation, phase, sender): they count even if they come before anyone waits, and a wait that
// reaches its target subtracts it, so the same tags can be waited on again. One instance is shared
// by all NICs of a GPU. Arrivals older than the current generation are dropped and counted as
// stale; they can never make a newer step look complete.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/transport/imm.h"

namespace weightcast::transport {

struct Expect {
  uint8_t phase = 0;
  uint16_t sender = 0;
  uint64_t count = 0;
};

class ImmCounters {
 public:
  using Clock = std::chrono::steady_clock;

  // Sets the current generation; arrivals of older generations are dropped from now on, and
  // credits already held for older generations are discarded.
  void begin_generation(uint8_t generation);
  uint8_t generation() const;

  // Called by the progress thread for every arrived immediate.
  void arrive(uint32_t imm);

  // Blocks until every expectation of `generation` is met, then subtracts them. On deadline,
  // returns kTimeout naming each sender that is short, with its phase and counts; nothing is
  // subtracted then.
  Status wait(uint8_t generation, const std::vector<Expect>& expect, Clock::time_point deadline);
  // The same over groups (e.g. one per sender): blocks until some group not yet `done` is met,
  // subtracts it, marks it done and returns its index. Errors name every short group's senders.
  Result<size_t> wait_any(uint8_t generation, const std::vector<std::vector<Expect>>& groups,
                          std::vector<bool>& done, Clock::time_point deadline);

  uint64_t stale() const;
  uint64_t count(uint8_t generation, uint8_t phase, uint16_t sender) const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint8_t generation_ = 0;
  uint64_t stale_ = 0;
  std::map<std::tuple<uint8_t, uint8_t, uint16_t>, uint64_t> credits_;
};

}  // namespace weightcast::transport
