// Gathers over NCCL (issue 15): trainer ranks whose shards live on GPUs of one NVLink domain
// gather with NCCL point-to-point sends and receives instead of the host collective's one-sided
// NIC writes. One communicator per gather group (trainer ranks linked through the plan's
// gathers), created in prepare() from a unique id its lowest rank publishes through the
// rendezvous. A phase's gathers are one NCCL group on a stream of their own: members pack their
// pieces on the calling thread's stream and send them; a root receives them and unpacks them into
// its gather buffer on the calling thread's stream, after its own pieces, so the projections that
// follow read them in stream order.
//
// The schedule (who sends what to whom, in which order, and the packing runs) is plain C++ and
// tested on the CPU by running every rank's schedule through an in-memory exchange; the NCCL part
// needs GPUs of one host and loads libnccl.so.2 at run time (nccl_available()).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "weightcast/exec/collective.h"

namespace weightcast::exec {

// The gather group of trainer rank `rank`: every trainer rank in its NVLink domain (the
// topology's, through the trainer mesh's hosts), sorted. One NCCL communicator each; a rank's
// NCCL rank is its index. (From the specs alone, so every rank's part of the plan agrees.)
std::vector<uint32_t> gather_group(const spec::Inputs& in, uint32_t rank);

// One piece on the wire: piece `piece` of gather `gather`, between this rank and trainer `peer`
// (the root for a send, the member for a receive), `bytes` long, at `off` of the phase's packing
// area (sends) or receive area (receives).
struct PieceTransfer {
  uint32_t gather = 0, piece = 0, peer = 0;
  uint64_t bytes = 0, off = 0;
};
// A rank's part of one phase: its sends as a member and its receives as a root, each in the
// order both ends issue them (gathers ascending, then pieces), and its own pieces of the gathers
// it roots (copied into place).
struct PhaseTransfers {
  std::vector<PieceTransfer> sends, recvs, local;
  uint64_t send_bytes = 0, recv_bytes = 0;
};
std::vector<PhaseTransfers> phase_transfers(const spec::Inputs& in, const plan::Plan& plan,
                                            uint32_t rank);
// Where rank `rank`'s gathered boxes sit in its gather buffer (offset per gather it roots; a
// phase's boxes one after another, every phase from offset 0: a phase's unpacks follow the
// previous phase's projections on one stream) and the buffer's size.
std::pair<std::vector<uint64_t>, uint64_t> gather_offsets(const spec::Inputs& in,
                                                          const plan::Plan& plan, uint32_t rank);

// Copies the part `piece` of a row-major tensor box `from` (data `src`) into the row-major box
// `to` (data `dst`), both of `esize`-byte elements and both containing `piece`, run by run with
// `copy` (a memcpy, or a device-to-device copy queued on a stream). Packing is `to` = `piece`,
// unpacking `from` = `piece`.
using CopyFn = std::function<Status(std::byte* dst, const std::byte* src, uint64_t bytes)>;
Status copy_piece(const core::Box& piece, const core::Box& from, const std::byte* src,
                  const core::Box& to, std::byte* dst, size_t esize, const CopyFn& copy);

// Whether libnccl.so.2 can be loaded here (and this build has CUDA); if not, why in `why`.
bool nccl_available(std::string* why = nullptr);

// The NCCL collective for trainer rank `rank` on CUDA device `device`: `shards` finds this
// rank's device shards. Gathers never cross hosts (the planner refuses or reports those); a
// group whose ranks are on several hosts fails at communicator creation.
Result<std::unique_ptr<Collective>> create_nccl_collective(const spec::Inputs& in,
                                                           const plan::Plan& plan, uint32_t rank,
                                                           transport::RendezvousClient* rdv,
                                                           ShardLookup shards, int device);

}  // namespace weightcast::exec
