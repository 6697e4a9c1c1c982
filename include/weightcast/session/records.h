// The rendezvous records peers exchange, each one struct with its encoding next to its key
// (session/keys.h): whoever writes a record and whoever reads it use the same code. Values come
// from other processes: decode() accepts exactly what encode() writes and refuses anything else
// with an error naming the record and the text it got, never a crash or a half-read value.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "weightcast/core/status.h"

namespace weightcast::session {

// keys::armed(r): a receiver's readiness for one attempt, overwritten on every arm.
struct ArmRecord {
  uint64_t step = 0;
  uint8_t generation = 0;      // the generation the attempt's writes must carry
  uint32_t incarnation = 0;    // of the process that armed (its buffers)
  std::string encode() const;  // "STEP GENERATION INCARNATION"
  static Result<ArmRecord> decode(std::string_view text);
};

// keys::arms_used(rank): the step and attempt a trainer pushes and the version of each
// receiver's arm it used, put before its first write (a restarted trainer never reuses one).
struct UsedArms {
  uint64_t step = 0;
  uint32_t attempt = 0;
  std::map<uint32_t, uint64_t> arms;  // receiver -> version of the arm used
  std::string encode() const;         // "STEP ATTEMPT R:VERSION ..."
  static Result<UsedArms> decode(std::string_view text);
};

// keys::incarnation(role, rank): the incarnation a peer runs now.
struct IncarnationRecord {
  uint32_t value = 0;
  std::string encode() const;  // decimal
  static Result<IncarnationRecord> decode(std::string_view text);
};

// keys::meta(role, rank): what a peer tells the controller when it joins.
struct PeerMeta {
  std::string plan_digest;  // the inputs digest of the plan it runs (no spaces)
  uint32_t nics = 0;
  uint32_t tensors = 0;        // tensors it must register
  uint64_t bytes = 0;          // their total size
  std::string encode() const;  // "DIGEST NICS TENSORS BYTES"
  static Result<PeerMeta> decode(std::string_view text);
};

// A rendezvous value as text (records are ASCII).
inline std::string_view text_of(std::span<const uint8_t> v) {
  return {reinterpret_cast<const char*>(v.data()), v.size()};
}

}  // namespace weightcast::session
