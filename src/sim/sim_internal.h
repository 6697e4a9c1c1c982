// The simulator's trace writer: Chrome trace / Perfetto JSON spans of the predicted step, one
// process per sender (its compute track, its copy track, one lane per NIC) and per receiver,
// bounded in size. Private to src/sim.
#pragma once

#include <string>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"

namespace weightcast::sim {

constexpr uint32_t kComputeLane = 0, kCopyLane = 1, kFirstNicLane = 2;

class Tracer {
 public:
  Tracer(std::string path, size_t max_events, const plan::Plan& plan)
      : path_(std::move(path)), max_(max_events), plan_(plan) {}
  bool on() const { return !path_.empty(); }
  void span(uint32_t sender, uint32_t lane, const std::string& name, double t, double dur);
  // Back-to-back shards on one NIC lane merge into one span.
  void nic(uint32_t sender, uint32_t nic_lane, double t, double dur);
  void span_receiver(uint32_t receiver, const std::string& name, double t, double dur);
  Status write();

 private:
  struct Span {
    uint32_t pid, tid;
    std::string name;
    double t, dur;
  };
  void add(Span s);
  std::string path_;
  size_t max_;
  const plan::Plan& plan_;
  std::vector<Span> spans_;
  std::vector<std::vector<int64_t>> open_nic_;  // [sender][lane] -> index of its open span
  uint64_t dropped_ = 0;
};

}  // namespace weightcast::sim
