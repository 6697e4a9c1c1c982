// The rendezvous records (session/records.h): strict text encodings.
#include "weightcast/session/records.h"

#include <fmt/format.h>

#include <charconv>
#include <limits>
#include <vector>

namespace weightcast::session {

namespace {

// The text, cut short for an error message, printable.
std::string shown(std::string_view t) {
  std::string o;
  for (char c : t.substr(0, 64)) o += (c >= 32 && c < 127) ? c : '?';
  return t.size() > 64 ? o + "..." : o;
}

Status malformed(const char* record, std::string_view t, const char* why) {
  return Status(Code::kRemote, fmt::format("malformed {} record '{}': {}", record, shown(t), why));
}

// Fields separated by single spaces, none empty.
std::vector<std::string_view> fields(std::string_view t) {
  std::vector<std::string_view> out;
  size_t at = 0;
  for (;;) {
    const size_t sp = t.find(' ', at);
    out.push_back(t.substr(at, sp == std::string_view::npos ? std::string_view::npos : sp - at));
    if (sp == std::string_view::npos) return out;
    at = sp + 1;
  }
}

// An unsigned decimal of at most `max`, digits only.
template <typename T>
bool number(std::string_view f, T& out, uint64_t max = std::numeric_limits<T>::max()) {
  if (f.empty() || f.size() > 20) return false;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
  if (ec != std::errc() || p != f.data() + f.size() || v > max) return false;
  out = static_cast<T>(v);
  return true;
}

}  // namespace

std::string ArmRecord::encode() const {
  return fmt::format("{} {} {}", step, unsigned{generation}, incarnation);
}

Result<ArmRecord> ArmRecord::decode(std::string_view t) {
  const auto f = fields(t);
  if (f.size() != 3) return malformed("arm", t, "expected STEP GENERATION INCARNATION");
  ArmRecord a;
  if (!number(f[0], a.step)) return malformed("arm", t, "bad step");
  if (!number(f[1], a.generation)) return malformed("arm", t, "bad generation (0..255)");
  if (!number(f[2], a.incarnation)) return malformed("arm", t, "bad incarnation");
  return a;
}

std::string UsedArms::encode() const {
  std::string s = fmt::format("{} {}", step, attempt);
  for (const auto& [r, v] : arms) s += fmt::format(" {}:{}", r, v);
  return s;
}

Result<UsedArms> UsedArms::decode(std::string_view t) {
  const auto f = fields(t);
  if (f.size() < 2) return malformed("used-arms", t, "expected STEP ATTEMPT R:VERSION ...");
  UsedArms u;
  if (!number(f[0], u.step)) return malformed("used-arms", t, "bad step");
  if (!number(f[1], u.attempt)) return malformed("used-arms", t, "bad attempt");
  for (size_t i = 2; i < f.size(); ++i) {
    const size_t colon = f[i].find(':');
    uint32_t r = 0;
    uint64_t v = 0;
    if (colon == std::string_view::npos || !number(f[i].substr(0, colon), r) ||
        !number(f[i].substr(colon + 1), v))
      return malformed("used-arms", t, "expected R:VERSION pairs after the attempt");
    if (!u.arms.emplace(r, v).second) return malformed("used-arms", t, "a receiver twice");
  }
  return u;
}

std::string IncarnationRecord::encode() const { return std::to_string(value); }

Result<IncarnationRecord> IncarnationRecord::decode(std::string_view t) {
  IncarnationRecord k;
  if (!number(t, k.value)) return malformed("incarnation", t, "expected a 32-bit decimal");
  return k;
}

std::string PeerMeta::encode() const {
  return fmt::format("{} {} {} {}", plan_digest, nics, tensors, bytes);
}

Result<PeerMeta> PeerMeta::decode(std::string_view t) {
  const auto f = fields(t);
  if (f.size() != 4) return malformed("peer-meta", t, "expected DIGEST NICS TENSORS BYTES");
  PeerMeta m;
  if (f[0].empty()) return malformed("peer-meta", t, "empty plan digest");
  m.plan_digest = std::string(f[0]);
  if (!number(f[1], m.nics)) return malformed("peer-meta", t, "bad NIC count");
  if (!number(f[2], m.tensors)) return malformed("peer-meta", t, "bad tensor count");
  if (!number(f[3], m.bytes)) return malformed("peer-meta", t, "bad byte count");
  return m;
}

}  // namespace weightcast::session
