// Shared benchmark harness: timing, peak RSS, and the one-line ratio every benchmark prints.
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace weightcast::perf {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Peak resident set size of this process so far, in bytes.
inline double peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) * 1024.0;
}

// "name: ours X unit vs baseline Y unit = ratio R (target: ...)".
inline void ratio(const std::string& name, double ours, double base, const char* unit,
                  const char* target) {
  std::printf("%-34s ours %10.3f %-4s baseline %10.3f %-4s ratio %.3f  (%s)\n", name.c_str(), ours,
              unit, base, unit, base > 0 ? ours / base : 0.0, target);
}

}  // namespace weightcast::perf
