// Chrome trace / Perfetto JSON of a simulated step (ui.perfetto.dev, chrome://tracing).
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "sim_internal.h"

namespace weightcast::sim {

void Tracer::add(Span s) {
  if (spans_.size() >= max_) {
    ++dropped_;
    return;
  }
  spans_.push_back(std::move(s));
}

void Tracer::span(uint32_t sender, uint32_t lane, const std::string& name, double t, double dur) {
  if (on() && dur > 0) add({sender + 1, lane, name, t, dur});
}

void Tracer::nic(uint32_t sender, uint32_t nic_lane, double t, double dur) {
  if (!on() || dur <= 0) return;
  if (open_nic_.size() <= sender) open_nic_.resize(sender + 1);
  auto& open = open_nic_[sender];
  if (open.size() <= nic_lane) open.resize(nic_lane + 1, -1);
  if (open[nic_lane] >= 0) {
    Span& s = spans_[static_cast<size_t>(open[nic_lane])];
    if (t <= s.t + s.dur + 1e-9) {  // continues the lane's busy period
      s.dur = t + dur - s.t;
      return;
    }
  }
  const bool ipc =
      nic_lane + 1 == static_cast<uint32_t>(std::max(1, plan_.senders[sender].nics) + 1);
  const size_t before = spans_.size();
  add({sender + 1, kFirstNicLane + nic_lane, ipc ? "ipc writes" : "NIC writes", t, dur});
  open[nic_lane] = spans_.size() > before ? static_cast<int64_t>(before) : -1;
}

void Tracer::span_receiver(uint32_t receiver, const std::string& name, double t, double dur) {
  if (on() && dur > 0)
    add({static_cast<uint32_t>(plan_.senders.size()) + 1 + receiver, 0, name, t, dur});
}

Status Tracer::write() {
  if (!on()) return Status::ok();
  using nlohmann::json;
  json ev = json::array();
  const size_t S = plan_.senders.size();
  for (size_t s = 0; s < S; ++s) {
    ev.push_back({{"ph", "M"},
                  {"name", "process_name"},
                  {"pid", s + 1},
                  {"args", {{"name", fmt::format("predicted: trainer rank {}", s)}}}});
    ev.push_back({{"ph", "M"},
                  {"name", "thread_name"},
                  {"pid", s + 1},
                  {"tid", kComputeLane},
                  {"args", {{"name", "gathers, projections, ring waits"}}}});
    ev.push_back({{"ph", "M"},
                  {"name", "thread_name"},
                  {"pid", s + 1},
                  {"tid", kCopyLane},
                  {"args", {{"name", "staging copies"}}}});
    const int nics = std::max(1, plan_.senders[s].nics);
    for (int k = 0; k <= nics; ++k)
      ev.push_back(
          {{"ph", "M"},
           {"name", "thread_name"},
           {"pid", s + 1},
           {"tid", kFirstNicLane + static_cast<uint32_t>(k)},
           {"args", {{"name", k == nics ? std::string("ipc link") : fmt::format("NIC {}", k)}}}});
  }
  for (size_t r = 0; r < plan_.receivers.size(); ++r)
    ev.push_back({{"ph", "M"},
                  {"name", "process_name"},
                  {"pid", S + 1 + r},
                  {"args",
                   {{"name", fmt::format("predicted: inference rank {} (replica {})",
                                         plan_.receivers[r].rank, plan_.receivers[r].replica)}}}});
  for (const Span& s : spans_)
    ev.push_back({{"ph", "X"},
                  {"name", s.name},
                  {"pid", s.pid},
                  {"tid", s.tid},
                  {"ts", s.t * 1e6},
                  {"dur", s.dur * 1e6}});
  json j = {{"traceEvents", std::move(ev)}, {"displayTimeUnit", "ms"}};
  if (dropped_)
    j["otherData"] = {{"dropped_spans", dropped_},
                      {"note", fmt::format("trace bounded at {} spans", max_)}};
  std::ofstream f(path_);
  f << j.dump() << "\n";
  if (!f) return Status(Code::kSystem, fmt::format("writing trace {}: failed", path_));
  return Status::ok();
}

}  // namespace weightcast::sim
