// A GPU's NICs as one: registration on every NIC, remote descriptors that carry one key per NIC,
// and the striping rule that turns one write into one shard per NIC (each with the immediate).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "weightcast/transport/domain.h"

namespace weightcast::transport {

struct Region {
  void* base = nullptr;
  uint64_t len = 0;
  std::vector<LocalMr> per_nic;
};

// What a peer needs to write into a region: one key per NIC. Serialisable.
struct RemoteRegion {
  uint64_t len = 0;
  std::vector<RemoteKey> per_nic;
  std::vector<uint8_t> serialize() const;
  static Result<RemoteRegion> parse(std::span<const uint8_t> bytes);
};

// Splits [0, len) over `nics` shards: shard i is [i*len/nics, (i+1)*len/nics), possibly empty.
struct Shard {
  uint64_t off, len;
};
std::vector<Shard> stripe(uint64_t len, uint32_t nics);

// Address blobs of all NICs of a group, as one blob (and back).
std::vector<uint8_t> pack_addresses(const std::vector<std::vector<uint8_t>>& per_nic);
Result<std::vector<std::vector<uint8_t>>> unpack_addresses(std::span<const uint8_t> blob);

class NicGroup {
 public:
  static Result<std::unique_ptr<NicGroup>> open(const std::vector<DomainConfig>& nics);

  size_t size() const { return nics_.size(); }
  Domain& nic(size_t i) { return *nics_[i]; }
  std::vector<uint8_t> address() const;  // packed per-NIC blobs
  // Connects NIC i to the peer's NIC i. Returns the group peer id.
  Result<uint32_t> connect(std::span<const uint8_t> peer_address);
  PeerId nic_peer(uint32_t group_peer, size_t nic) const { return peers_[group_peer][nic]; }
  Result<Region> register_memory(void* base, uint64_t len, MemKind kind);
  // Domain::register_split on every NIC (the region's base is `direct`).
  Result<Region> register_split(void* direct, MemKind kind, void* landing, uint64_t len);
  // Domain::writes_direct of NIC 0 for the peer's (packed) group address.
  bool writes_direct(std::span<const uint8_t> peer_address) const;
  Status deregister(const Region& r);
  static RemoteRegion remote(const Region& r);

 private:
  std::vector<std::unique_ptr<Domain>> nics_;
  std::vector<std::vector<PeerId>> peers_;
};

}  // namespace weightcast::transport
