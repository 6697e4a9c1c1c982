// The logging path: levels, tags, the test sink, and $WEIGHTCAST_LOG read by a fresh process.
#include "weightcast/core/log.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace weightcast::core::log {
namespace {

struct Captured {
  std::vector<std::pair<Level, std::string>> lines;
  Captured() {
    set_sink_for_tests([this](Level l, const std::string& s) { lines.emplace_back(l, s); });
  }
  ~Captured() {
    set_sink_for_tests({});
    set_level(Level::kWarn);
  }
};

TEST(Log, ParsesEveryLevelAndRefusesOthers) {
  Level l = Level::kOff;
  for (const char* n : {"trace", "debug", "info", "warn", "error", "off"}) {
    ASSERT_TRUE(parse_level(n, l)) << n;
    EXPECT_STREQ(level_name(l), n);
  }
  EXPECT_TRUE(parse_level("warning", l));
  EXPECT_EQ(l, Level::kWarn);
  l = Level::kDebug;
  EXPECT_FALSE(parse_level("verbose", l));
  EXPECT_FALSE(parse_level("", l));
  EXPECT_FALSE(parse_level("INFO", l));
  EXPECT_EQ(l, Level::kDebug);  // untouched on failure
}

TEST(Log, TagsEveryLineWithWhoAndStep) {
  Captured c;
  set_level(Level::kInfo);
  info({"trainer", 3, 7}, 12, "pushed {} bytes", 4096);
  warn({"inference", 0, 0}, kNoStep, "no step here");
  error({"controller"}, kNoStep, "controller line");
  info({"trainer", 0, 2}, 0, "step zero is a step");
  debug({"trainer", 3, 7}, 12, "below the level: dropped");
  ASSERT_EQ(c.lines.size(), 4u);
  EXPECT_EQ(c.lines[0].first, Level::kInfo);
  EXPECT_EQ(c.lines[0].second, "trainer 3 inc 7 step 12: pushed 4096 bytes");
  EXPECT_EQ(c.lines[1].first, Level::kWarn);
  EXPECT_EQ(c.lines[1].second, "inference 0: no step here");
  EXPECT_EQ(c.lines[2].first, Level::kError);
  EXPECT_EQ(c.lines[2].second, "controller: controller line");
  EXPECT_EQ(c.lines[3].second, "trainer 0 inc 2 step 0: step zero is a step");
}

TEST(Log, LevelsFilterAndOffIsSilent) {
  Captured c;
  set_level(Level::kError);
  EXPECT_FALSE(enabled(Level::kWarn));
  EXPECT_TRUE(enabled(Level::kError));
  warn({"trainer", 1}, 1, "dropped");
  error({"trainer", 1}, 1, "kept");
  set_level(Level::kOff);
  EXPECT_FALSE(enabled(Level::kError));
  EXPECT_FALSE(enabled(Level::kOff));
  error({"trainer", 1}, 1, "dropped too");
  set_level(Level::kTrace);
  at(Level::kTrace, {"trainer", 1}, 2, "trace {}", "kept");
  ASSERT_EQ(c.lines.size(), 2u);
  EXPECT_EQ(c.lines[0].second, "trainer 1 step 1: kept");
  EXPECT_EQ(c.lines[1].first, Level::kTrace);
}

// Runs this test binary again with WEIGHTCAST_LOG=value, running only LogChild.Speaks, and
// returns what it wrote to stderr.
std::string child_stderr(const char* value) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    if (FILE* null = std::fopen("/dev/null", "w")) ::dup2(fileno(null), 1);
    ::setenv("WEIGHTCAST_LOG", value, 1);
    ::setenv("WC_LOG_CHILD", "1", 1);
    ::execl("/proc/self/exe", "log_child", "--gtest_filter=LogChild.Speaks", nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  std::array<char, 4096> b;
  for (ssize_t n; (n = ::read(fds[0], b.data(), b.size())) > 0;) out.append(b.data(), n);
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  return out;
}

TEST(LogChild, Speaks) {
  if (!std::getenv("WC_LOG_CHILD")) GTEST_SKIP() << "runs in the child of LogEnv's tests";
  info({"inference", 2, 5}, 9, "an info line");
  warn({"inference", 2, 5}, 9, "a warn line");
}

TEST(LogEnv, ReadsTheLevelFromTheEnvironment) {
  const std::string info_out = child_stderr("info");
  EXPECT_NE(info_out.find(" info  inference 2 inc 5 step 9: an info line"), std::string::npos)
      << info_out;
  EXPECT_NE(info_out.find(" warn  inference 2 inc 5 step 9: a warn line"), std::string::npos);
  const std::string warn_out = child_stderr("warn");
  EXPECT_EQ(warn_out.find("an info line"), std::string::npos) << warn_out;
  EXPECT_NE(warn_out.find("a warn line"), std::string::npos);
  const std::string off = child_stderr("off");
  EXPECT_EQ(off.find("weightcast"), std::string::npos) << off;
  EXPECT_EQ(off.find("line"), std::string::npos) << off;
}

TEST(LogEnv, NamesAnUnknownLevelAndKeepsWarn) {
  const std::string out = child_stderr("loud");
  EXPECT_NE(out.find("WEIGHTCAST_LOG is 'loud'; expected trace, debug, info, warn, error or off"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("an info line"), std::string::npos);
  EXPECT_NE(out.find("a warn line"), std::string::npos);
}

}  // namespace
}  // namespace weightcast::core::log
