// Placeholder until the verbs backend lands (see issue 3's note): says so instead of pretending.
#include "verbs_domain.h"

namespace weightcast::transport {

Result<std::unique_ptr<Domain>> open_verbs_domain(const DomainConfig&) {
  return Status(Code::kTransport, "the ibverbs backend is not implemented yet; use --backend fabric");
}

}  // namespace weightcast::transport
