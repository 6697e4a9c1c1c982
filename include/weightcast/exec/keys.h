// The rendezvous key layout, in one place. Peers publish under their role, rank and incarnation
// (a restarted process gets a new incarnation, so its keys never alias its dead predecessor's;
// incarnation 0 has no suffix).
//   send/{rank}[@inc]      a trainer's NIC address blob
//   gbuf/{rank}[@inc]      a trainer's gather buffer descriptor (as a gather root)
//   recv/{r}[@inc]         a receiver's NIC address blob
//   region/{r}[@inc]       a receiver's tensor descriptors
//   inc/{role}/{rank}      the incarnation a peer runs now (overwritten by a restart)
//   meta/{role}/{rank}     what a peer told the controller when it joined
//   armed/{r}              a receiver's readiness for one attempt: "STEP GENERATION INCARNATION",
//                          overwritten on every arm; senders wait for a version newer than the
//                          last they used (RendezvousClient::get_newer)
//   used/{rank}            "STEP ATTEMPT R:VERSION ...": the step and attempt a trainer pushes and
//                          the arm versions it used, put before its first write: a restarted
//                          trainer never reuses an arm and goes on counting attempts
//   part/{role}/{rank}     a peer's part of the plan (exec/parts.h)
//   gone                   sessions that closed, one "role/rank@inc" per line (the server's)
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

namespace weightcast::exec::keys {

inline std::string at(std::string base, uint32_t incarnation) {
  return incarnation ? fmt::format("{}@{}", base, incarnation) : base;
}
inline std::string sender_address(uint32_t rank, uint32_t inc) {
  return at(fmt::format("send/{}", rank), inc);
}
inline std::string gather_buffer(uint32_t rank, uint32_t inc) {
  return at(fmt::format("gbuf/{}", rank), inc);
}
inline std::string receiver_address(uint32_t r, uint32_t inc) {
  return at(fmt::format("recv/{}", r), inc);
}
inline std::string receiver_tensors(uint32_t r, uint32_t inc) {
  return at(fmt::format("region/{}", r), inc);
}
inline std::string incarnation(const char* role, uint32_t rank) {
  return fmt::format("inc/{}/{}", role, rank);
}
inline std::string meta(const char* role, uint32_t rank) {
  return fmt::format("meta/{}/{}", role, rank);
}
inline std::string armed(uint32_t r) { return fmt::format("armed/{}", r); }
inline std::string part(const char* role, uint32_t rank) {
  return fmt::format("part/{}/{}", role, rank);
}
inline std::string arms_used(uint32_t rank) { return fmt::format("used/{}", rank); }
// The name a peer gives its rendezvous session; the server lists it under "gone" once the
// session closes (the peer exited or died).
inline std::string session(const char* role, uint32_t rank, uint32_t inc) {
  return fmt::format("{}/{}@{}", role, rank, inc);
}

}  // namespace weightcast::exec::keys
