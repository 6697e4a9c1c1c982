// The same-host backend's shared segment: memfd creation, attaching through /proc, lanes.
#include "ipc_shm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <new>

namespace weightcast::transport::ipc {

namespace {

Status sys_error(const std::string& what) {
  return Status(Code::kSystem, fmt::format("{}: {}", what, std::strerror(errno)));
}

bool process_gone(uint32_t pid) { return kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

}  // namespace

Segment::Segment(Segment&& o) noexcept : map_(o.map_), fd_(o.fd_) {
  o.map_ = nullptr;
  o.fd_ = -1;
}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    this->~Segment();
    map_ = o.map_;
    fd_ = o.fd_;
    o.map_ = nullptr;
    o.fd_ = -1;
  }
  return *this;
}

Segment::~Segment() {
  if (map_) munmap(map_, segment_bytes());
  if (fd_ >= 0) close(fd_);
}

Result<Segment> Segment::create() {
  Segment s;
  s.fd_ = memfd_create("weightcast-ipc", MFD_CLOEXEC);
  if (s.fd_ < 0) return sys_error("memfd_create");
  if (ftruncate(s.fd_, static_cast<off_t>(segment_bytes())) != 0)
    return sys_error("ftruncate(ipc segment)");
  void* m = mmap(nullptr, segment_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, s.fd_, 0);
  if (m == MAP_FAILED) return sys_error("mmap(ipc segment)");
  s.map_ = static_cast<Layout*>(m);  // zero-filled: every tag, owner and cursor starts at 0
  Header& h = s.map_->header;
  uint64_t nonce = 0;
  while (nonce == 0)
    if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce) return sys_error("getrandom");
  h.nonce = nonce;
  h.pid = static_cast<uint32_t>(getpid());
  h.slots = kSlots;
  h.lanes = kLanes;
  h.ring = kRing;
  std::memcpy(h.magic, "WCIPC001", 8);
  std::atomic_thread_fence(std::memory_order_release);
  return s;
}

Result<Segment> Segment::attach(uint32_t pid, int fd, uint64_t nonce) {
  Segment s;
  const std::string path = fmt::format("/proc/{}/fd/{}", pid, fd);
  s.fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (s.fd_ < 0) {
    if (process_gone(pid))
      return Status(Code::kRemote, fmt::format("the peer's process {} is gone", pid));
    return sys_error(
        fmt::format("open {} (the peer's ipc segment; peers must run as one user "
                    "in one pid namespace)",
                    path));
  }
  struct stat st {};
  if (fstat(s.fd_, &st) != 0) return sys_error("fstat(peer ipc segment)");
  if (static_cast<size_t>(st.st_size) != segment_bytes())
    return Status(Code::kRemote, fmt::format("{} is {} B, not an ipc segment of this build ({} B)",
                                             path, st.st_size, segment_bytes()));
  void* m = mmap(nullptr, segment_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, s.fd_, 0);
  if (m == MAP_FAILED) return sys_error("mmap(peer ipc segment)");
  s.map_ = static_cast<Layout*>(m);
  std::atomic_thread_fence(std::memory_order_acquire);
  const Header& h = s.map_->header;
  if (std::memcmp(h.magic, "WCIPC001", 8) != 0 || h.nonce != nonce || h.pid != pid ||
      h.slots != kSlots || h.lanes != kLanes || h.ring != kRing)
    return Status(Code::kRemote,
                  fmt::format("{} is not the ipc segment process {} published (a restarted "
                              "process reused the pid, or another build)",
                              path, pid));
  return s;
}

int Segment::claim_lane(uint64_t owner_tag) {
  Header& h = map_->header;
  for (uint32_t i = 0; i < kLanes; ++i) {
    Lane& l = map_->lanes[i];
    uint64_t cur = l.owner.load(std::memory_order_acquire);
    // A lane whose writer died is taken over: its published immediates stay to be drained.
    if (cur != 0 && !process_gone(static_cast<uint32_t>(cur >> 32))) continue;
    if (!l.owner.compare_exchange_strong(cur, owner_tag, std::memory_order_acq_rel)) continue;
    uint32_t used = h.lanes_used.load(std::memory_order_acquire);
    while (used < i + 1 &&
           !h.lanes_used.compare_exchange_weak(used, i + 1, std::memory_order_acq_rel)) {
    }
    return static_cast<int>(i);
  }
  return -1;
}

void Segment::release_lane(int lane, uint64_t owner_tag) {
  uint64_t cur = owner_tag;
  map_->lanes[lane].owner.compare_exchange_strong(cur, 0, std::memory_order_acq_rel);
}

bool Segment::push(int lane, uint32_t imm) {
  Lane& l = map_->lanes[lane];
  const uint64_t head = l.head.load(std::memory_order_relaxed);
  if (head - l.tail.load(std::memory_order_acquire) >= kRing) return false;
  l.imm[head % kRing] = imm;
  l.head.store(head + 1, std::memory_order_release);
  return true;
}

std::string host_identity() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string boot;
  std::getline(f, boot);
  struct stat ns {};
  const uint64_t pidns = stat("/proc/self/ns/pid", &ns) == 0 ? ns.st_ino : 0;
  return fmt::format("{}/{}", boot, pidns);
}

}  // namespace weightcast::transport::ipc
