// The backend factory: the one place a backend is picked.
#include "weightcast/transport/domain.h"

#include <cstdlib>

#include "fabric/fabric_domain.h"
#include "fault_domain.h"
#include "hybrid_domain.h"
#include "ipc/ipc_domain.h"
#include "verbs/verbs_domain.h"
#include "weightcast/transport/crash_signals.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_domain(const DomainConfig& cfg) {
  restore_crash_signals();  // again, in case a provider library was loaded late
  Result<std::unique_ptr<Domain>> d = cfg.backend == "fabric"   ? open_fabric_domain(cfg)
                                      : cfg.backend == "verbs"  ? open_verbs_domain(cfg)
                                      : cfg.backend == "ipc"    ? open_ipc_domain(cfg)
                                      : cfg.backend == "hybrid" ? open_hybrid_domain(cfg, "fabric")
                                      : cfg.backend == "hybrid:verbs"
                                          ? open_hybrid_domain(cfg, "verbs")
                                          : Result<std::unique_ptr<Domain>>(invalid(
                                                "unknown transport backend '{}' (expected fabric, "
                                                "verbs, ipc, hybrid or hybrid:verbs)",
                                                cfg.backend));
  if (!d) return d;
  std::string faults = cfg.faults;
  if (const char* env = std::getenv("WEIGHTCAST_FAULTS"); env && faults.empty()) faults = env;
  if (faults.empty()) return d;
  return wrap_with_faults(std::move(d).value(), faults);
}

}  // namespace weightcast::transport
