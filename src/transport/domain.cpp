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

namespace {
using Links = BackendInfo::Links;
const BackendInfo kBackends[] = {
    {"fabric", "libfabric (its provider: tcp, efa, verbs...); nics are local IP addresses", false,
     Links::kNic, open_fabric_domain},
    {"verbs", "ibverbs RC queue pairs; nics are RDMA devices such as mlx5_0", true, Links::kNic,
     open_verbs_domain},
    {"ipc",
     "every peer on this host: GPU memory through CUDA IPC, host memory through "
     "process_vm_writev",
     false, Links::kSameHost, open_ipc_domain},
    {"hybrid", "peers of this host over ipc, every other over libfabric", false, Links::kHybrid,
     [](const DomainConfig& c) { return open_hybrid_domain(c, "fabric"); }},
    {"hybrid:verbs", "peers of this host over ipc, every other over ibverbs", true, Links::kHybrid,
     [](const DomainConfig& c) { return open_hybrid_domain(c, "verbs"); }},
};
}  // namespace

std::span<const BackendInfo> backends() { return kBackends; }

const BackendInfo* find_backend(std::string_view name) {
  for (const BackendInfo& b : kBackends)
    if (name == b.name) return &b;
  return nullptr;
}

std::string backend_names() {
  std::string s;
  const size_t n = std::size(kBackends);
  for (size_t i = 0; i < n; ++i)
    s += std::string(i == 0 ? "" : i + 1 == n ? " or " : ", ") + kBackends[i].name;
  return s;
}

Result<std::unique_ptr<Domain>> open_domain(const DomainConfig& cfg) {
  restore_crash_signals();  // again, in case a provider library was loaded late
  const BackendInfo* b = find_backend(cfg.backend);
  if (!b)
    return invalid("unknown transport backend '{}' (expected {})", cfg.backend, backend_names());
  Result<std::unique_ptr<Domain>> d = b->open(cfg);
  if (!d) return d;
  std::string faults = cfg.faults;
  if (const char* env = std::getenv("WEIGHTCAST_FAULTS"); env && faults.empty()) faults = env;
  if (faults.empty()) return d;
  return wrap_with_faults(std::move(d).value(), faults);
}

}  // namespace weightcast::transport
