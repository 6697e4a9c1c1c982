// Crashes must look like crashes. libinfinipath and libpsm2, which Debian's libfabric pulls in,
// install SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT handlers from their load-time constructors: they
// print "terminated with signal N", exit with status 1 (what a failed verification returns) and
// write `*.btr` files into the working directory. The transport library undoes that when it is
// loaded and again whenever a domain opens.
#pragma once

namespace weightcast::transport {

// Resets to the default action every crash signal whose handler lives in libinfinipath or
// libpsm*, and sets IPATH_NO_BACKTRACE / HFI_NO_BACKTRACE for child processes. Returns how many
// handlers it reset. Handlers installed by anyone else are left alone.
int restore_crash_signals();

}  // namespace weightcast::transport
