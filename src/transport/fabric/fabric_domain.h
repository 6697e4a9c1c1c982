// Internal: the libfabric backend's factory.
#pragma once

#include <fmt/format.h>

#include <map>

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_fabric_domain(const DomainConfig& cfg);

}  // namespace weightcast::transport
