// The logging path: one spdlog logger on stderr, its level from $WEIGHTCAST_LOG.
#include "weightcast/core/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>

namespace weightcast::core::log {

namespace {

constexpr const char* kNames[] = {"trace", "debug", "info", "warn", "error", "off"};

spdlog::level::level_enum to_spd(Level l) {
  switch (l) {
    case Level::kTrace:
      return spdlog::level::trace;
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarn:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
    case Level::kOff:
      break;
  }
  return spdlog::level::off;
}

// %* in the pattern: the level as WEIGHTCAST_LOG names it, padded to 5 ("warn ", not "warning").
class LevelFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& m, const std::tm&,
              spdlog::memory_buf_t& out) override {
    static constexpr std::string_view kShort[] = {"trace", "debug", "info ", "warn ",
                                                  "error", "error", "off  "};
    const auto l = static_cast<size_t>(m.level);
    const std::string_view s = kShort[l < 7 ? l : 4];
    out.append(s.data(), s.data() + s.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LevelFlag>();
  }
};

std::shared_ptr<spdlog::logger> make_logger(spdlog::sink_ptr sink) {
  auto lg = std::make_shared<spdlog::logger>("weightcast", std::move(sink));
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<LevelFlag>('*').set_pattern("%Y-%m-%d %H:%M:%S.%e %* %v");
  lg->set_formatter(std::move(f));
  return lg;
}

// Hands each formatted line to a test's function.
class TestSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit TestSink(std::function<void(Level, const std::string&)> f) : f_(std::move(f)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    const int l = static_cast<int>(m.level);
    f_(l <= 4 ? static_cast<Level>(l) : Level::kError,
       std::string(m.payload.data(), m.payload.size()));
  }
  void flush_() override {}

 private:
  std::function<void(Level, const std::string&)> f_;
};

struct State {
  std::mutex mu;
  std::shared_ptr<spdlog::logger> logger;
  std::atomic<int> level{static_cast<int>(Level::kWarn)};

  State() {
    // Not registered with spdlog's registry: an application's own spdlog setup stays its own.
    logger = make_logger(std::make_shared<spdlog::sinks::stderr_sink_mt>());
    const char* env = std::getenv("WEIGHTCAST_LOG");
    Level l = Level::kWarn;
    if (env && *env && !parse_level(env, l)) {
      logger->set_level(spdlog::level::warn);
      logger->warn(
          "weightcast: WEIGHTCAST_LOG is '{}'; expected trace, debug, info, warn, error or off "
          "(using warn)",
          env);
      l = Level::kWarn;
    }
    set(l);
  }
  void set(Level l) {
    level.store(static_cast<int>(l));
    logger->set_level(to_spd(l));
    logger->flush_on(spdlog::level::trace);  // every line reaches stderr before a crash
  }
};

State& state() {
  static State* s = new State();  // never destroyed: threads may log while the process exits
  return *s;
}

}  // namespace

std::string Who::tag() const {
  std::string t = role.empty() ? "weightcast" : role;
  if (rank >= 0) t += fmt::format(" {}", rank);
  if (incarnation) t += fmt::format(" inc {}", incarnation);
  return t;
}

Level level() { return static_cast<Level>(state().level.load()); }
void set_level(Level l) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  s.set(l);
}
bool enabled(Level l) { return l != Level::kOff && static_cast<int>(l) >= state().level.load(); }

bool parse_level(std::string_view name, Level& out) {
  for (int i = 0; i < 6; ++i)
    if (name == kNames[i]) {
      out = static_cast<Level>(i);
      return true;
    }
  if (name == "warning") {
    out = Level::kWarn;
    return true;
  }
  return false;
}
const char* level_name(Level l) { return kNames[static_cast<int>(l)]; }

void write(Level l, const Who& who, uint64_t step, std::string_view message) {
  if (!enabled(l)) return;
  State& s = state();
  std::shared_ptr<spdlog::logger> lg;
  {
    std::lock_guard<std::mutex> g(s.mu);
    lg = s.logger;
  }
  if (step != kNoStep)
    lg->log(to_spd(l), "{} step {}: {}", who.tag(), step, message);
  else
    lg->log(to_spd(l), "{}: {}", who.tag(), message);
}

void set_sink_for_tests(std::function<void(Level, const std::string&)> sink) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  spdlog::sink_ptr k;
  if (sink)
    k = std::make_shared<TestSink>(std::move(sink));
  else
    k = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  s.logger = make_logger(std::move(k));
  s.set(static_cast<Level>(s.level.load()));
}

}  // namespace weightcast::core::log
