// Plan parts over the rendezvous (see parts.h).
#include "weightcast/exec/parts.h"

#include <fmt/format.h>

#include <cstdio>

#include "weightcast/plan/part.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/session/keys.h"

namespace weightcast::exec {

namespace {
constexpr size_t kChunk = 768 << 10;  // under the rendezvous' 1 MiB value limit

Status put_chunked(transport::RendezvousClient& rdv, const std::string& key,
                   const std::string& text) {
  const size_t n = (text.size() + kChunk - 1) / kChunk;
  for (size_t k = 0; k < n; ++k)
    if (Status s = rdv.put(fmt::format("{}/{}", key, k), text.substr(k * kChunk, kChunk)); !s)
      return s;
  return rdv.put(key, std::to_string(n));  // last: a reader that sees the count finds the chunks
}
}  // namespace

Status publish_parts(const plan::Plan& whole, transport::RendezvousClient& rdv) {
  if (Status s = rdv.put(session::keys::kPlanRanks,
                         fmt::format("{} {}", whole.senders.size(), whole.receivers.size()));
      !s)
    return s;
  for (uint32_t r = 0; r < whole.senders.size(); ++r)
    if (Status s = put_chunked(rdv, session::keys::part("trainer", r),
                               plan::to_json(plan::trainer_part(whole, r)));
        !s)
      return s;
  for (uint32_t r = 0; r < whole.receivers.size(); ++r)
    if (Status s = put_chunked(rdv, session::keys::part("inference", r),
                               plan::to_json(plan::inference_part(whole, r)));
        !s)
      return s;
  return rdv.put(session::keys::kPlanDigest, whole.inputs_digest);
}

Result<plan::Plan> fetch_part(const std::string& role, uint32_t rank, const std::string& digest,
                              transport::RendezvousClient& rdv,
                              std::chrono::steady_clock::time_point deadline) {
  const std::string key = session::keys::part(role.c_str(), rank);
  auto ranks = rdv.get(session::keys::kPlanRanks, deadline);
  if (!ranks) return ranks.status();
  unsigned long senders = 0, receivers = 0;
  if (std::sscanf(std::string(ranks->begin(), ranks->end()).c_str(), "%lu %lu", &senders,
                  &receivers) != 2)
    return invalid("plan/ranks: malformed");
  const unsigned long ranks_of_role = role == "trainer" ? senders : receivers;
  if (rank >= ranks_of_role)
    return invalid("{} rank {} is not in the plan ({} {} ranks)", role, rank, ranks_of_role, role);
  auto count = rdv.get(key, deadline);
  if (!count) return count.status();
  const std::string c(count->begin(), count->end());
  if (c.empty() || c.size() > 6 || c.find_first_not_of("0123456789") != std::string::npos)
    return invalid("{}: bad chunk count '{}'", key, c);
  std::string text;
  for (size_t k = 0, n = std::stoul(c); k < n; ++k) {
    auto v = rdv.get(fmt::format("{}/{}", key, k), deadline);
    if (!v) return v.status();
    text.append(v->begin(), v->end());
  }
  auto p = plan::from_json(text);
  if (!p) return Status(p.status().code(), fmt::format("{}: {}", key, p.status().message()));
  if (p->part_role != role || p->part_rank != rank)
    return invalid("{}: the part is for {} {}", key, p->part_role, p->part_rank);
  if (p->inputs_digest != digest)
    return invalid(
        "{} {}: the controller's plan is for inputs {}, this peer's specs give {}: every peer "
        "must load the same trainer, inference and topology files",
        role, rank, p->inputs_digest, digest);
  return p;
}

}  // namespace weightcast::exec
