// A fault-injecting Domain beside the real one: it forwards to a real backend and breaks what
// the spec asks for, so tests drive the progress engine, the executor and the barrier through
// every failure a NIC can produce without needing one that fails. Spec: comma-separated
//   fail_post=K          the K-th op handed to post() is refused (the ones before it go out)
//   fail_completion=K    the K-th write completion becomes an error completion
//   drop_completion=K    the K-th write completion is never delivered
//   orphan_error=K       after the K-th write completion, an error completion with an id
//                        nobody posted is delivered
//   fail_poll=K          the K-th poll() that has something to deliver fails instead
//   delay=N              every write completion is delivered N poll() calls late
//   reorder              completions of each poll() are delivered in reverse order
//   hold_arrivals=K:N    arrivals (immediates) K .. K+N-1 are held back and delivered right
//                        after the first arrival of another generation: writes of an aborted
//                        attempt arriving after the retry began
//   stall_peer=K         every op to the K-th peer connected is refused for now (EAGAIN),
//                        forever: a peer whose process is gone while its connection lingers
//   reuse_peer=K         the K-th connect (K >= 2) returns the first peer's id, and ops to it
//                        go to the new peer from then on: verbs giving a restarted process
//                        its predecessor's QP slot
// Counts start at 1 and cover the domain's whole life.
#pragma once

#include <memory>
#include <string>

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> wrap_with_faults(std::unique_ptr<Domain> real,
                                                 const std::string& spec);

}  // namespace weightcast::transport
