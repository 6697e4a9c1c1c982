// Internal: the ibverbs backend's logic as plain functions, so unit tests reach it without an
// RDMA device: QP state transitions, work-request chains, completion decoding, address blobs.
#pragma once

#include <infiniband/verbs.h>

#include <span>
#include <vector>

#include "weightcast/transport/domain.h"

namespace weightcast::transport::verbs {

struct Transition {
  ibv_qp_attr attr{};
  int mask = 0;
};

Transition to_init(uint8_t port);
// RoCE needs the global route (GID); InfiniBand routes by LID. Both are set when a GID is known.
Transition to_rtr(uint32_t remote_qpn, uint32_t remote_psn, uint16_t remote_lid,
                  const ibv_gid& remote_gid, uint8_t port, int gid_index, ibv_mtu mtu);
Transition to_rts(uint32_t psn);

// ::ffff:a.b.c.d, the GID form RoCE v2 gives an IPv4 address.
bool is_ipv4_mapped(const ibv_gid& g);

// One signaled RDMA WRITE (WITH_IMM when the op has an immediate, imm in network byte order) per
// op, linked into one chain. `lkeys[i]` is op i's local key.
struct Chain {
  std::vector<ibv_send_wr> wrs;
  std::vector<ibv_sge> sges;
};
void build_chain(std::span<const WriteOp> ops, std::span<const uint32_t> lkeys, Chain& out);

// A work completion as the backend reports it. Receive completions carry the immediate (host
// byte order); `repost` says a receive was consumed from the SRQ and must be replaced.
// Receives are pre-posted with wr_id kRecvWrId (write ids never take it), since a failed
// completion's opcode is undefined.
inline constexpr uint64_t kRecvWrId = ~uint64_t{0};
Completion decode(const ibv_wc& wc, bool& repost);

// The address blob: who we are and one QP number per peer slot (peer slot = peer rank).
struct Address {
  uint32_t rank = 0;
  uint16_t lid = 0;
  ibv_gid gid{};
  uint8_t port = 1;
  uint8_t mtu = IBV_MTU_1024;
  std::vector<uint32_t> qpns;
  std::vector<uint8_t> serialize() const;
  static Result<Address> parse(std::span<const uint8_t> b);
};

}  // namespace weightcast::transport::verbs
