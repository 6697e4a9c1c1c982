// Arena layouts and per-sender immediate expectations.
#include "weightcast/exec/binding.h"

#include <cstring>

#include "weightcast/spec/layout.h"

namespace weightcast::exec {

namespace {
uint64_t align(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
}  // namespace

SenderLayout sender_layout(const spec::Inputs& in, uint32_t rank) {
  SenderLayout l;
  for (size_t i = 0; i < in.trainer.params.size(); ++i) {
    const spec::Param& p = in.trainer.params[i];
    auto b = spec::local_box(p.shape, p.placement, in.trainer.mesh, rank);
    if (!b || b->empty()) continue;
    ShardSlot s{static_cast<int>(i), *b, l.bytes,
                static_cast<uint64_t>(b->numel()) * core::dtype_size(p.dtype)};
    l.by_param[s.param] = l.shards.size();
    l.shards.push_back(s);
    l.bytes = align(l.bytes + s.bytes);
  }
  return l;
}

ReceiverLayout receiver_layout(const plan::Plan& plan, uint32_t receiver) {
  ReceiverLayout l;
  for (uint32_t d = 0; d < plan.dests.size(); ++d) {
    if (plan.dests[d].receiver != receiver) continue;
    l.offset[d] = l.bytes;
    l.bytes = align(l.bytes + plan.dests[d].bytes);
  }
  return l;
}

std::vector<Expectation> expectations(const plan::Plan& plan, uint32_t receiver, uint32_t nics) {
  std::map<std::pair<uint16_t, uint16_t>, uint64_t> n;
  for (const plan::Write& w : plan.writes)
    if (plan.dests[w.dest].receiver == receiver)
      n[{w.phase, static_cast<uint16_t>(w.sender)}] += nics;
  std::vector<Expectation> out;
  for (const auto& [k, c] : n) out.push_back({k.first, k.second, c});
  return out;
}

std::vector<uint8_t> serialize_descriptors(
    const std::vector<std::pair<uint32_t, transport::RemoteRegion>>& d) {
  std::vector<uint8_t> b{'W', 'C', 'D', '1'};
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put32(static_cast<uint32_t>(d.size()));
  for (const auto& [id, r] : d) {
    const auto one = r.serialize();
    put32(id);
    put32(static_cast<uint32_t>(one.size()));
    b.insert(b.end(), one.begin(), one.end());
  }
  return b;
}

Result<std::map<uint32_t, transport::RemoteRegion>> parse_descriptors(std::span<const uint8_t> b) {
  std::map<uint32_t, transport::RemoteRegion> out;
  size_t pos = 4;
  auto get32 = [&](uint32_t& v) {
    if (pos + 4 > b.size()) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{b[pos + i]} << (8 * i);
    pos += 4;
    return true;
  };
  uint32_t n = 0;
  if (b.size() < 4 || std::memcmp(b.data(), "WCD1", 4) != 0 || !get32(n))
    return invalid("bad tensor descriptor blob");
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t id = 0, len = 0;
    if (!get32(id) || !get32(len) || pos + len > b.size())
      return invalid("tensor descriptor blob truncated at entry {}", i);
    auto r = transport::RemoteRegion::parse(b.subspan(pos, len));
    if (!r) return r.status();
    out[id] = *r;
    pos += len;
  }
  return out;
}

}  // namespace weightcast::exec
