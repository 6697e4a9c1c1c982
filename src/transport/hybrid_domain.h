// Internal: one link slot that reaches each peer the best way: a peer of this host over the ipc
// backend (GPU-to-GPU copies, process_vm_writev), any other over the NIC backend (libfabric or
// ibverbs). A region is registered with both; its remote key carries both keys.
#pragma once

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

// `cfg.backend` is "hybrid"; its NIC side is `nic_backend` ("fabric" or "verbs") with the rest
// of `cfg` (provider, address...).
Result<std::unique_ptr<Domain>> open_hybrid_domain(const DomainConfig& cfg,
                                                   const std::string& nic_backend);

}  // namespace weightcast::transport
