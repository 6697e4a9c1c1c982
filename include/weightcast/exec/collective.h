// Gathers as a collective interface. A plan's gathers of one phase run together: each member
// sends its pieces, the root assembles every gathered box in its gather buffer. On GPUs this is
// NCCL inside an NVLink domain (nccl_collective.h); HostCollective runs it across local processes
// (on host memory, or on GPU memory over a transport that writes it, such as ipc) with the same
// one-sided writes as the data path: members write their pieces
// into the root's registered gather buffer with immediates tagged {generation, phase, member},
// and the root waits on its own immediate counters for exactly the pieces the plan names.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "weightcast/exec/memory.h"
#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"
#include "weightcast/transport/progress.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::exec {

class Collective {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~Collective() = default;
  // Publishes what peers need (callable early and again); prepare() publishes too, then connects
  // to the roots this rank sends to and the members that send to it, at their `incarnations`
  // (per trainer rank; missing entries are 0: a trainer that restarts while others already did
  // must not link to their dead first incarnations).
  virtual Status publish() = 0;
  virtual Status prepare(Clock::time_point deadline, std::span<const uint32_t> incarnations) = 0;
  // This rank's part of the listed gathers (all of `phase`); returns when its pieces are on
  // their way and, for a root, when every piece of its gathers has landed. A member also sends
  // its pieces of later phases ahead, in phase order, while their roots have opened and its
  // packing ring has room, so that a root rarely waits for a member still busy projecting.
  virtual Status run(uint8_t generation, uint16_t phase, std::span<const uint32_t> gathers,
                     Clock::time_point deadline) = 0;
  // Sends ahead, without waiting, what this rank can of the step's pieces (the next phases, in
  // order, whose roots have opened, while the packing ring has room). Called at the start of a
  // step and between projections, so a root does not wait for a member that reaches the phase
  // later.
  virtual Status pump(uint8_t generation, Clock::time_point deadline) = 0;
  // End of a step: waits until every piece this rank sent, and its "open" writes as a root, have
  // been written (or failed).
  virtual Status finish(Clock::time_point deadline) = 0;
  // Where a gathered box sits on its root (nullptr on other ranks).
  virtual const std::byte* gathered(uint32_t gather) const = 0;
  // A root restarted: reconnect to its new incarnation before the next run.
  virtual Status rejoin(uint32_t root, uint32_t incarnation, Clock::time_point deadline) = 0;
  // Called by a root at the start of each step, once it no longer reads its gather buffer from
  // the previous step: tells its members they may write this generation's pieces. Members wait
  // for it before writing, so a member that runs ahead never overwrites a box its root is still
  // projecting from. Returns once the writes are queued; finish() reports their errors.
  virtual Status open(uint8_t generation, Clock::time_point deadline) = 0;
  // This rank's gather buffer (as a root): gathered(g) points inside it.
  virtual const Buffer& buffer() const = 0;
  // Whether the gather buffer is device memory (projections read gathered boxes in place).
  virtual bool on_device() const = 0;
  // Page-locks the gather buffer (Buffer::pin) when the GPU copies gathered boxes from it.
  virtual Status pin_buffer() = 0;
  // This process's incarnation (a restarted trainer publishes under a new one).
  virtual void set_incarnation(uint32_t k) = 0;
  // Where this rank's shards are registered with the transport: a piece that is one run in the
  // shard wherever it is one run in the root's box is written from there directly, without
  // packing (and, on the GPU, without waiting for the packing copies).
  using SourceLookup =
      std::function<std::optional<std::pair<const transport::Region*, uint64_t>>(int param)>;
  virtual void set_sources(SourceLookup sources) = 0;
};

// Finds this rank's shard of a trainer param: its global box and its bytes in the collective's
// memory (nullptr if not held). With GPU shards the lookup brings this step's shard to the host
// first, so it can fail.
using ShardLookup = std::function<Result<std::pair<core::Box, const std::byte*>>(int param)>;

class HostCollective final : public Collective {
 public:
  static Result<std::unique_ptr<HostCollective>> create(
      const spec::Inputs& in, const plan::Plan& plan, uint32_t rank,
      transport::ProgressEngine* engine, transport::ImmCounters* counters,
      transport::RendezvousClient* rdv, ShardLookup shards, MemoryKind memory = MemoryKind::kHost,
      int device = 0);
  Status publish() override;
  Status prepare(Clock::time_point deadline, std::span<const uint32_t> incarnations) override;
  Status run(uint8_t generation, uint16_t phase, std::span<const uint32_t> gathers,
             Clock::time_point deadline) override;
  Status finish(Clock::time_point deadline) override;
  Status pump(uint8_t generation, Clock::time_point deadline) override;
  const std::byte* gathered(uint32_t gather) const override;
  Status rejoin(uint32_t root, uint32_t incarnation, Clock::time_point deadline) override;
  Status open(uint8_t generation, Clock::time_point deadline) override;
  const Buffer& buffer() const override { return gbuf_; }
  bool on_device() const override { return memory_ == MemoryKind::kCuda; }
  Status pin_buffer() override { return memory_ == MemoryKind::kHost ? gbuf_.pin() : Status::ok(); }
  void set_incarnation(uint32_t k) override { incarnation_ = k; }
  void set_sources(SourceLookup sources) override { sources_ = std::move(sources); }

 private:
  // A root or a member this rank exchanges with: its connection and its gather buffer (a root's
  // receives our pieces; a member's only carries the zero-length "open" writes).
  struct Link {
    uint32_t peer;
    transport::RemoteRegion gbuf;
    uint32_t incarnation = 0;
  };
  // Connects to trainer `r` at `incarnation` and records it in `into` (roots_ or members_).
  Status link(const char* role, uint32_t r, uint32_t incarnation, Clock::time_point deadline,
              std::map<uint32_t, Link>& into);
  // Packs and writes this rank's pieces of `phase` to their roots, from the next free range of
  // the packing ring. `ahead`: only if every root has opened already and the ring has room
  // without waiting (else returns false with nothing sent, and run(phase) sends them later).
  Result<bool> send(uint8_t gen, uint16_t phase, bool ahead, Clock::time_point deadline);
  // This rank's shard holding `piece` of gather `gi` (host bytes), or why it cannot be read.
  Result<std::pair<core::Box, const std::byte*>> held_piece(uint32_t gi,
                                                            const core::Box& piece) const;
  // Whether `root` opened the slot of its gather buffer `phase` uses to us for `gen`; waits for
  // it until `deadline`.
  bool opened(uint8_t gen, uint32_t root, uint16_t phase, Clock::time_point deadline);
  Status send_open(uint8_t gen);
  Status release(uint8_t gen, uint16_t local_phase);
  HostCollective(const spec::Inputs& in, const plan::Plan& plan) : in_(in), plan_(plan) {}
  uint64_t box_bytes(const plan::Gather& g) const;
  const spec::Inputs& in_;
  const plan::Plan& plan_;
  uint32_t rank_ = 0;
  transport::ProgressEngine* engine_ = nullptr;
  transport::ImmCounters* counters_ = nullptr;
  transport::RendezvousClient* rdv_ = nullptr;
  ShardLookup shards_;
  SourceLookup sources_;
  std::vector<uint64_t> offset_;  // per gather: where its box sits in its root's gather buffer
  Buffer gbuf_;                   // this rank's gather buffer (as a root), one area per phase
  // Pieces are packed contiguously before they are sent, each phase's into a range of a ring:
  // at least two phases' worth, and all of them when they fit in kPackAhead bytes.
  static constexpr uint64_t kPackAhead = 64ull << 20;
  Buffer pack_;
  std::vector<std::vector<uint32_t>> member_of_;  // per phase: gathers this rank sends pieces to
  std::vector<uint64_t> pack_bytes_;              // per phase: bytes of this rank's pieces
  std::vector<int> sent_;                         // per phase: the generation last sent (-1: none)
  struct Packed {  // a range of the ring still read by a batch of writes
    uint64_t lo, hi, batch;
  };
  std::deque<Packed> packed_;
  uint64_t pack_head_ = 0;              // where the next phase's pieces go
  std::vector<uint64_t> open_batches_;  // this step's "open" writes, as a root
  uint32_t opens_sent_ = 0;  // this step's opens, as a root: slots of phases < opens + kWindow - 1
  // A root's gather buffer holds kWindow phases; its k-th phase goes in slot k % kWindow.
  static constexpr uint16_t kWindow = 4;
  std::map<std::pair<uint32_t, uint16_t>, uint16_t> local_phase_;  // (root, phase) -> k
  CopyQueue marks_;  // kCuda: per slot, the stream mark made when the root began that phase
  transport::Region gbuf_region_, pack_region_;
  uint32_t incarnation_ = 0;
  std::map<uint32_t, Link> roots_, members_;
  bool both_ends_ = false;  // the transport needs targets to connect as well
  // Where the gather and packing buffers live. kCuda (a transport that writes GPU memory): the
  // lookup gives device shards, pieces are packed and placed with device copies on the calling
  // thread's stream, and gathered() points into device memory.
  MemoryKind memory_ = MemoryKind::kHost;
  // Copies `n` bytes in this collective's memory (queued on the thread's stream on the GPU).
  Status copy(std::byte* dst, const std::byte* src, uint64_t n);
  // root -> (generation, opens of it received): the slots it opened to us this step
  std::map<uint32_t, std::pair<int, uint32_t>> opened_;
};

}  // namespace weightcast::exec
