// Internal: the same-host backend's factory. Peers of one host (one kernel, one pid namespace,
// one user) write each other's registered memory directly: CUDA regions through CUDA IPC
// handles (device-to-device copies on a stream of the writer's, same GPU or an NVLink peer),
// host regions with process_vm_writev(2). Each write's immediate reaches the target's lane only
// after its bytes are in place (the copy's event completed, or the syscall returned).
#pragma once

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_ipc_domain(const DomainConfig& cfg);

}  // namespace weightcast::transport
