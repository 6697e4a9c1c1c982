// Internal: the same-host backend's shared segment. Every ipc domain owns one memfd, mapped by
// itself and by every peer that connects to it (through /proc/<pid>/fd/<fd>, so the segment dies
// with its last mapping: a crashed process leaves nothing behind in /dev/shm). It holds
//   - a registry of the domain's registered regions (what a remote key names): host regions by
//     virtual address, CUDA regions by their allocation's IPC handle and the offset in it;
//   - lanes: one single-producer ring of immediates per connected writer. A writer appends an
//     immediate only after its bytes are in place; the owner's poll() drains every lane. A
//     writer that dies mid-append loses only its own unpublished immediate (no shared cursor
//     can be left half-moved), and its lane is taken over by the next writer once it is gone.
// Everything a peer reads from a segment is checked: sizes, magic, the owner's nonce, and the
// slot's tag against the key, so a stale or forged key fails by name instead of writing.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "weightcast/core/status.h"

namespace weightcast::transport::ipc {

inline constexpr uint32_t kSlots = 1u << 17;  // regions one domain can register at once
inline constexpr uint32_t kLanes = 512;       // writers one domain can hear at once
inline constexpr uint32_t kRing = 4096;       // immediates a lane holds before its writer waits
inline constexpr size_t kHandleBytes = 64;    // cudaIpcMemHandle_t

enum class SlotKind : uint32_t { kHost = 1, kCuda = 2 };

struct Slot {
  std::atomic<uint64_t> tag;  // the remote key while registered, 0 when free
  uint32_t kind;              // SlotKind
  int32_t device;             // CUDA device of a kCuda region
  uint64_t len;
  uint64_t va;      // kHost: the region's address in the owner's process
  uint64_t offset;  // kCuda: the region's offset in its allocation
  uint8_t handle[kHandleBytes];
};

struct alignas(64) Lane {
  std::atomic<uint64_t> owner;  // the writer's (pid << 32 | nonce) while claimed, 0 when free
  alignas(64) std::atomic<uint64_t> head;  // written by the writer
  alignas(64) std::atomic<uint64_t> tail;  // written by the owner
  uint32_t imm[kRing];
};

struct Header {
  char magic[8];  // "WCIPC001"
  uint64_t nonce;
  uint32_t pid;
  uint32_t slots, lanes, ring;
  std::atomic<uint32_t> lanes_used;  // lanes [0, lanes_used) may be claimed
  std::atomic<uint32_t> closing;     // the owner is going away
};

struct Layout {
  Header header;
  alignas(64) Lane lanes[kLanes];
  Slot slots[kSlots];
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "lanes need address-free atomics");

// A mapped segment: the owner's (create) or a peer's (attach).
class Segment {
 public:
  Segment() = default;
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  ~Segment();
  static Result<Segment> create();
  // Maps the segment `fd` of process `pid`, and checks it is the one whose nonce was published.
  static Result<Segment> attach(uint32_t pid, int fd, uint64_t nonce);

  Layout* get() const { return map_; }
  int fd() const { return fd_; }

  // Writer side: claims a lane (a free one, or one whose writer is gone); -1 when all are live.
  int claim_lane(uint64_t owner_tag);
  void release_lane(int lane, uint64_t owner_tag);
  // Appends one immediate; false when the lane is full (the owner has not drained it yet).
  bool push(int lane, uint32_t imm);

 private:
  Layout* map_ = nullptr;
  int fd_ = -1;
};

// Bytes of a segment (all of it virtual until touched).
inline constexpr size_t segment_bytes() { return (sizeof(Layout) + 4095) & ~size_t{4095}; }

// This host's identity: the kernel's boot id and this process's pid namespace. Two domains can
// link only when both agree.
std::string host_identity();

}  // namespace weightcast::transport::ipc
