// The rendezvous key layout, in one place (the session module; each record's encoding is in
// session/records.h). Every key a peer writes lies under its identity
// ("trainer/3/", "inference/0/"): the rendezvous lets a peer token write only there
// (transport::peer_token). Keys under "job/" are the controller's (the job token's). Peers
// publish under their incarnation (a restarted process gets a new one, so its keys never alias
// its dead predecessor's, which it deletes; incarnation 0 has no suffix).
//   trainer/{rank}/send[@inc]    a trainer's NIC address blob
//   trainer/{rank}/gbuf[@inc]    a trainer's gather buffer descriptor (as a gather root)
//   inference/{r}/recv[@inc]     a receiver's NIC address blob
//   inference/{r}/region[@inc]   a receiver's tensor descriptors
//   {role}/{rank}/inc            the incarnation a peer runs now (overwritten by a restart)
//   {role}/{rank}/meta           what a peer told the controller when it joined
//   inference/{r}/armed          a receiver's readiness for one attempt: "STEP GENERATION
//                                INCARNATION", overwritten on every arm; senders wait for a
//                                version newer than the last they used (get_newer)
//   trainer/{rank}/used          "STEP ATTEMPT R:VERSION ...": the step and attempt a trainer
//                                pushes and the arm versions it used, put before its first write:
//                                a restarted trainer never reuses an arm and goes on counting
//   {role}/{rank}/metrics        a peer's last step record (api::metrics_json plus who, step,
//                                ok and running totals), put after every step while the
//                                controller serves metrics (job/metrics exists)
//   job/part/{role}/{rank}[/k]   a peer's part of the plan (exec/parts.h), in chunks
//   job/metrics                  present when the controller serves the job's metrics
//   job/plan/ranks, job/plan/digest
//   gone                         sessions that closed, one "role/rank@inc" per line (the server's)
// Nothing grows with the step count: per-step keys are overwritten.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace weightcast::session::keys {

// The identity a peer's token is issued for, and the prefix of every key it may write.
inline std::string identity(const char* role, uint32_t rank) {
  return fmt::format("{}/{}", role, rank);
}
inline std::string at(std::string base, uint32_t incarnation) {
  return incarnation ? fmt::format("{}@{}", base, incarnation) : base;
}
inline std::string sender_address(uint32_t rank, uint32_t inc) {
  return at(fmt::format("trainer/{}/send", rank), inc);
}
// The NCCL unique id of the gather group whose lowest trainer rank is `leader`, for one epoch
// (the group's incarnations and failures: exec/nccl_collective.h).
inline std::string nccl_id(uint32_t leader, const std::string& epoch) {
  return fmt::format("trainer/{}/nccl/{}", leader, epoch);
}
inline std::string gather_buffer(uint32_t rank, uint32_t inc) {
  return at(fmt::format("trainer/{}/gbuf", rank), inc);
}
inline std::string receiver_address(uint32_t r, uint32_t inc) {
  return at(fmt::format("inference/{}/recv", r), inc);
}
inline std::string receiver_tensors(uint32_t r, uint32_t inc) {
  return at(fmt::format("inference/{}/region", r), inc);
}
inline std::string incarnation(const char* role, uint32_t rank) {
  return fmt::format("{}/{}/inc", role, rank);
}
inline std::string meta(const char* role, uint32_t rank) {
  return fmt::format("{}/{}/meta", role, rank);
}
inline std::string armed(uint32_t r) { return fmt::format("inference/{}/armed", r); }
inline std::string part(const char* role, uint32_t rank) {
  return fmt::format("job/part/{}/{}", role, rank);
}
inline std::string metrics(const char* role, uint32_t rank) {
  return fmt::format("{}/{}/metrics", role, rank);
}
inline constexpr const char* kMetricsOn = "job/metrics";
inline constexpr const char* kPlanRanks = "job/plan/ranks";
inline constexpr const char* kPlanDigest = "job/plan/digest";
inline std::string arms_used(uint32_t rank) { return fmt::format("trainer/{}/used", rank); }
// The name a peer gives its rendezvous session; the server lists it under "gone" once the
// session closes (the peer exited or died).
inline std::string session(const char* role, uint32_t rank, uint32_t inc) {
  return fmt::format("{}/{}@{}", role, rank, inc);
}
// Whether the value of "gone" lists that session.
inline bool gone(std::string_view gone_value, const char* role, uint32_t rank, uint32_t inc) {
  return gone_value.find(session(role, rank, inc) + "\n") != std::string_view::npos;
}

}  // namespace weightcast::session::keys
