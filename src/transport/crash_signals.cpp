// Undoes the crash handlers of libinfinipath / libpsm2 (see crash_signals.h).
#include "weightcast/transport/crash_signals.h"

#include <dlfcn.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace weightcast::transport {

int restore_crash_signals() {
  ::setenv("IPATH_NO_BACKTRACE", "1", 0);  // read by those libraries' constructors in children
  ::setenv("HFI_NO_BACKTRACE", "1", 0);
  int reset = 0;
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) != 0) continue;
    void* fn = (old.sa_flags & SA_SIGINFO) ? reinterpret_cast<void*>(old.sa_sigaction)
                                           : reinterpret_cast<void*>(old.sa_handler);
    if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN || fn == nullptr) continue;
    Dl_info info{};
    if (::dladdr(fn, &info) == 0 || info.dli_fname == nullptr) continue;
    if (std::strstr(info.dli_fname, "infinipath") == nullptr &&
        std::strstr(info.dli_fname, "libpsm") == nullptr)
      continue;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    if (::sigaction(sig, &dfl, nullptr) == 0) ++reset;
  }
  return reset;
}

namespace {
// At load time of whatever links the transport (the CLI, tests, the Python module), after the
// libraries it depends on ran their constructors.
const int kRestoredAtLoad = restore_crash_signals();
}  // namespace

}  // namespace weightcast::transport
