// NIC groups: per-NIC registration and connection, descriptor and address serialisation.
#include "weightcast/transport/nic_group.h"

#include <fmt/format.h>

#include <cstring>

namespace weightcast::transport {

namespace {
void put64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
bool get64(std::span<const uint8_t> b, size_t& pos, uint64_t& v) {
  if (pos + 8 > b.size()) return false;
  v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{b[pos + i]} << (8 * i);
  pos += 8;
  return true;
}
}  // namespace

std::vector<uint8_t> RemoteRegion::serialize() const {
  std::vector<uint8_t> b{'W', 'C', 'R', '2'};
  put64(b, len);
  put64(b, per_nic.size());
  for (const RemoteKey& k : per_nic) {
    put64(b, k.addr);
    put64(b, k.key);
    put64(b, k.len);
    put64(b, k.key2);
  }
  return b;
}

Result<RemoteRegion> RemoteRegion::parse(std::span<const uint8_t> b) {
  RemoteRegion r;
  size_t pos = 4;
  uint64_t n = 0;
  if (b.size() < 4 || std::memcmp(b.data(), "WCR2", 4) != 0 || !get64(b, pos, r.len) ||
      !get64(b, pos, n) || n > 16)
    return invalid("bad remote region descriptor ({} bytes)", b.size());
  for (uint64_t i = 0; i < n; ++i) {
    RemoteKey k;
    if (!get64(b, pos, k.addr) || !get64(b, pos, k.key) || !get64(b, pos, k.len) ||
        !get64(b, pos, k.key2) || k.len != r.len)
      return invalid("bad remote region descriptor: NIC {} entry truncated or inconsistent", i);
    r.per_nic.push_back(k);
  }
  if (pos != b.size())
    return invalid("bad remote region descriptor: {} trailing bytes", b.size() - pos);
  return r;
}

std::vector<Shard> stripe(uint64_t len, uint32_t nics) {
  std::vector<Shard> s;
  for (uint32_t i = 0; i < nics; ++i) {
    const uint64_t lo = len * i / nics, hi = len * (i + 1) / nics;
    s.push_back({lo, hi - lo});
  }
  return s;
}

std::vector<uint8_t> pack_addresses(const std::vector<std::vector<uint8_t>>& per_nic) {
  std::vector<uint8_t> b{'W', 'C', 'A', '1'};
  put64(b, per_nic.size());
  for (const auto& a : per_nic) {
    put64(b, a.size());
    b.insert(b.end(), a.begin(), a.end());
  }
  return b;
}

Result<std::vector<std::vector<uint8_t>>> unpack_addresses(std::span<const uint8_t> b) {
  std::vector<std::vector<uint8_t>> out;
  size_t pos = 4;
  uint64_t n = 0;
  if (b.size() < 4 || std::memcmp(b.data(), "WCA1", 4) != 0 || !get64(b, pos, n) || n > 16)
    return invalid("bad address blob ({} bytes)", b.size());
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t len = 0;
    if (!get64(b, pos, len) || len > 4096 || pos + len > b.size())
      return invalid("bad address blob: NIC {} truncated", i);
    out.emplace_back(b.begin() + static_cast<long>(pos), b.begin() + static_cast<long>(pos + len));
    pos += len;
  }
  return out;
}

Result<std::unique_ptr<NicGroup>> NicGroup::open(const std::vector<DomainConfig>& nics) {
  if (nics.empty() || nics.size() > 4)
    return invalid("a NIC group has 1 to 4 NICs, got {}", nics.size());
  auto g = std::make_unique<NicGroup>();
  for (const DomainConfig& c : nics) {
    auto d = open_domain(c);
    if (!d) return d.status();
    g->nics_.push_back(std::move(d).value());
  }
  return g;
}

std::vector<uint8_t> NicGroup::address() const {
  std::vector<std::vector<uint8_t>> a;
  for (const auto& n : nics_) a.push_back(n->address());
  return pack_addresses(a);
}

Result<uint32_t> NicGroup::connect(std::span<const uint8_t> peer_address) {
  auto addrs = unpack_addresses(peer_address);
  if (!addrs) return addrs.status();
  if (addrs->size() != nics_.size())
    return invalid("peer has {} NICs, this group has {}: NIC groups must match", addrs->size(),
                   nics_.size());
  std::vector<PeerId> ids;
  for (size_t i = 0; i < nics_.size(); ++i) {
    auto p = nics_[i]->connect((*addrs)[i]);
    if (!p) return p.status();
    ids.push_back(*p);
  }
  peers_.push_back(ids);
  return static_cast<uint32_t>(peers_.size() - 1);
}

Result<Region> NicGroup::register_memory(void* base, uint64_t len, MemKind kind) {
  Region r{base, len, {}};
  for (auto& n : nics_) {
    auto m = n->register_memory(base, len, kind);
    if (!m) {
      (void)deregister(r);
      return m.status();
    }
    r.per_nic.push_back(*m);
  }
  return r;
}

Result<Region> NicGroup::register_split(void* direct, MemKind kind, void* landing, uint64_t len) {
  Region r{direct, len, {}};
  for (auto& n : nics_) {
    auto m = n->register_split(direct, kind, landing, len);
    if (!m) {
      (void)deregister(r);
      return m.status();
    }
    r.per_nic.push_back(*m);
  }
  return r;
}

bool NicGroup::writes_direct(std::span<const uint8_t> peer_address) const {
  auto addrs = unpack_addresses(peer_address);
  return addrs && !addrs->empty() && nics_[0]->writes_direct((*addrs)[0]);
}

Status NicGroup::deregister(const Region& r) {
  Status first;
  for (size_t i = 0; i < r.per_nic.size(); ++i)
    if (Status s = nics_[i]->deregister(r.per_nic[i]); !s && first.is_ok()) first = s;
  return first;
}

RemoteRegion NicGroup::remote(const Region& r) {
  RemoteRegion rr{r.len, {}};
  for (const LocalMr& m : r.per_nic) rr.per_nic.push_back(m.remote);
  return rr;
}

}  // namespace weightcast::transport
