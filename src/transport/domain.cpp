// The backend factory: the one place a backend is picked.
#include "weightcast/transport/domain.h"

#include "fabric/fabric_domain.h"
#include "verbs/verbs_domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_domain(const DomainConfig& cfg) {
  if (cfg.backend == "fabric") return open_fabric_domain(cfg);
  if (cfg.backend == "verbs") return open_verbs_domain(cfg);
  return invalid("unknown transport backend '{}' (expected fabric or verbs)", cfg.backend);
}

}  // namespace weightcast::transport
