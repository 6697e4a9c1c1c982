// Crashes keep their real signal: libinfinipath's handler (loaded with libfabric) is undone by
// the transport library, so a SIGSEGV is a SIGSEGV and no *.btr file appears.
#include "weightcast/transport/crash_signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "weightcast/transport/domain.h"

namespace weightcast::transport {
namespace {

TEST(CrashSignals, ASegfaultKeepsItsSignalAndWritesNoFiles) {
  // Opening a domain loads every provider (psm's libinfinipath among them on Debian).
  DomainConfig c;
  c.address = "127.0.0.1";
  auto d = open_domain(c);
  ASSERT_TRUE(d) << d.status().message();
  const auto dir =
      std::filesystem::temp_directory_path() / ("wc-crash-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::chdir(dir.c_str()) != 0) _exit(3);
    ::raise(SIGSEGV);
    _exit(4);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(st)) << "exit status " << (WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  if (WIFSIGNALED(st)) {
    EXPECT_EQ(WTERMSIG(st), SIGSEGV);
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "files written into " << dir;
  std::filesystem::remove_all(dir);
}

TEST(CrashSignals, HandlersOfOthersAreLeftAlone) {
  struct sigaction mine {};
  mine.sa_handler = [](int) {};
  sigemptyset(&mine.sa_mask);
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGBUS, &mine, &old), 0);
  EXPECT_EQ(restore_crash_signals(), 0);
  struct sigaction now {};
  ::sigaction(SIGBUS, nullptr, &now);
  EXPECT_EQ(now.sa_handler, mine.sa_handler);
  ::sigaction(SIGBUS, &old, nullptr);
}

}  // namespace
}  // namespace weightcast::transport
