// Internal: the ibverbs backend's factory (RC QPs, WRITE_WITH_IMM, SRQ of zero-byte receives).
#pragma once

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_verbs_domain(const DomainConfig& cfg);

}  // namespace weightcast::transport
