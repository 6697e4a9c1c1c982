// weightcast's one logging path (spdlog underneath). Library code prints nothing except through
// it; every line names who said it: "trainer 3 inc 7 step 12". The level comes from
// $WEIGHTCAST_LOG (trace, debug, info, warn, error, off; default warn), read once, or from
// set_level. Lines go to stderr:
//   2026-12-08 10:31:02.417 warn  trainer 3 inc 7 step 12: receiver 1 restarted (incarnation 9)
// docs/tracing.md lists what each level says.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace weightcast::core::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };
inline constexpr uint64_t kNoStep = ~uint64_t{0};

// Who a line is about: role ("trainer", "inference", "controller", or a module), rank and
// incarnation (when known). Lines about no step pass kNoStep.
struct Who {
  std::string role;
  int64_t rank = -1;
  uint32_t incarnation = 0;
  std::string tag() const;  // "trainer 3 inc 7" ("controller" with no rank)
};

Level level();
void set_level(Level l);
bool enabled(Level l);
// "warn" -> kWarn; false for a name that is none of the levels.
bool parse_level(std::string_view name, Level& out);
const char* level_name(Level l);

void write(Level l, const Who& who, uint64_t step, std::string_view message);

// Tests: every line (level, its text after the time stamp) goes to `sink` instead of stderr
// while it is set; an empty function restores stderr.
void set_sink_for_tests(std::function<void(Level, const std::string&)> sink);

template <typename... A>
void at(Level l, const Who& who, uint64_t step, fmt::format_string<A...> f, A&&... a) {
  if (enabled(l)) write(l, who, step, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void debug(const Who& who, uint64_t step, fmt::format_string<A...> f, A&&... a) {
  at(Level::kDebug, who, step, f, std::forward<A>(a)...);
}
template <typename... A>
void info(const Who& who, uint64_t step, fmt::format_string<A...> f, A&&... a) {
  at(Level::kInfo, who, step, f, std::forward<A>(a)...);
}
template <typename... A>
void warn(const Who& who, uint64_t step, fmt::format_string<A...> f, A&&... a) {
  at(Level::kWarn, who, step, f, std::forward<A>(a)...);
}
template <typename... A>
void error(const Who& who, uint64_t step, fmt::format_string<A...> f, A&&... a) {
  at(Level::kError, who, step, f, std::forward<A>(a)...);
}

}  // namespace weightcast::core::log
