// Traces of real steps: spans (readiness, gathers, projections, ring waits, drains, a receiver's
// barrier wait) and per-NIC rates as Chrome trace / Perfetto JSON events, one file per process,
// appended after every step. The file is in the JSON array format without its closing bracket
// (ui.perfetto.dev and chrome://tracing read it as it is, also from a process that died);
// `weightcast trace merge` joins a job's files into one view. Off unless a peer is given a
// trace directory: then one branch per span. Bounded: past max_events nothing more is recorded
// and the file says how many were dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::exec {

class StepTrace {
 public:
  using Clock = std::chrono::steady_clock;
  // Lanes (thread ids in the trace): one per kind of work.
  enum Lane : int { kStep = 0, kCompute = 1, kReadiness = 2, kWrites = 3 };
  static constexpr size_t kDefaultMaxEvents = 200000;

  // Creates `path` (truncating it) for the process `name` ("trainer 3").
  static Result<std::unique_ptr<StepTrace>> open(const std::string& path, const std::string& name,
                                                 size_t max_events = kDefaultMaxEvents);
  ~StepTrace();
  StepTrace(const StepTrace&) = delete;
  StepTrace& operator=(const StepTrace&) = delete;

  // Thread-safe; `what` is copied; `generation` tags the attempt (args.generation).
  void span(const std::string& what, Lane lane, Clock::time_point t0, Clock::time_point t1,
            uint64_t generation);
  void counter(const std::string& what, Clock::time_point t, double value);
  // Appends what was recorded since the last flush (after every step); kSystem if the file
  // cannot be written.
  Status flush();
  uint64_t dropped() const;
  const std::string& path() const { return path_; }

  // The trace directory a peer uses: `configured`, else $WEIGHTCAST_TRACE_DIR, else empty (off).
  static std::string directory(const std::string& configured);

 private:
  StepTrace() = default;
  void add(std::string event);

  mutable std::mutex mu_;
  std::FILE* f_ = nullptr;
  std::string path_;
  int pid_ = 0;
  size_t max_ = 0, recorded_ = 0;
  uint64_t dropped_ = 0;
  bool told_dropped_ = false;
  std::vector<std::string> pending_;
};

// Joins trace files (ours, in the array format with or without its closing bracket, or
// {"traceEvents": [...]} as the simulator writes) into one {"traceEvents": [...]} text.
// `align` shifts each file so its first event is at 0 (to set a predicted step beside a
// measured one); otherwise every file is shifted by the earliest event of all of them, which
// keeps processes of one host in step. Errors name the file.
Result<std::string> merge_traces(const std::vector<std::string>& paths, bool align);

// A timeline of a trace (as merge_traces gives it) as SVG: one row per process and lane with
// spans, coloured by kind with a legend, a time axis in ms; at most `max_spans` spans drawn
// (the longest), and the picture says when some were left out.
Result<std::string> trace_svg(const std::string& merged, size_t max_spans = 20000);

}  // namespace weightcast::exec
