// The 32-bit immediate every write carries, in one place: {generation, phase, sender}.
// Generation names one attempt of a step: the receiver picks a fresh one every time it arms
// (api/weightcast.cpp; the demo's controller per round), so writes of an aborted attempt never
// count toward a retry. Comparisons are modular, so a receiver can tell an arrival of an older
// attempt (stale, ignored) from one of the current.
#pragma once

#include <cstdint>

namespace weightcast::transport {

struct Imm {
  uint8_t generation = 0;
  uint8_t phase = 0;
  uint16_t sender = 0;

  static constexpr uint32_t kMaxSenders = 1u << 16;
  static constexpr uint32_t kMaxPhases = 1u << 8;
  // Not a plan phase: a gather root's "my buffer is free for this generation" to its members
  // (exec/collective.h). Plans use phases 0 .. 253.
  static constexpr uint8_t kGatherOpenPhase = 255;
  // Not a plan phase: a sender's "my attempt of this generation failed; do not wait for the rest"
  // (a zero-length write sent after its failed push drained). The barrier fails at once, naming
  // the sender.
  static constexpr uint8_t kAbortPhase = 254;

  uint32_t encode() const {
    return (uint32_t{generation} << 24) | (uint32_t{phase} << 16) | uint32_t{sender};
  }
  static Imm decode(uint32_t v) {
    return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint16_t>(v)};
  }
  bool operator==(const Imm&) const = default;
};

// Signed distance a - b between generations modulo 256: negative means a is older than b.
inline int generation_diff(uint8_t a, uint8_t b) {
  return static_cast<int8_t>(static_cast<uint8_t>(a - b));
}

// The count rule: a write striped over `nics` NICs yields one immediate per NIC, zero-length
// shards included, so receivers can expect exact counts.
constexpr uint32_t imms_per_write(uint32_t nics) { return nics; }

}  // namespace weightcast::transport
