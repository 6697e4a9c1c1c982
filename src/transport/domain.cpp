// The backend factory: the one place a backend is picked.
#include "weightcast/transport/domain.h"

#include "fabric/fabric_domain.h"
#include "weightcast/transport/crash_signals.h"
#include "verbs/verbs_domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_domain(const DomainConfig& cfg) {
  restore_crash_signals();  // again, in case a provider library was loaded late
  if (cfg.backend == "fabric") return open_fabric_domain(cfg);
  if (cfg.backend == "verbs") return open_verbs_domain(cfg);
  return invalid("unknown transport backend '{}' (expected fabric or verbs)", cfg.backend);
}

}  // namespace weightcast::transport
