// The same-host backend (ipc_domain.h): registry slots name regions, lanes carry immediates,
// copies run on one CUDA stream (device memory) or in process_vm_writev (host memory).
#include "ipc_domain.h"

#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <unordered_map>

#include "ipc_cuda.h"
#include "ipc_shm.h"

namespace weightcast::transport {

namespace {

using ipc::Segment;
using ipc::Slot;
using ipc::SlotKind;

constexpr const char* kAddressTag = "wcipc1";
constexpr size_t kMaxInflightMarks = 1024;  // stream batches in flight before back-pressure

// The published address: "wcipc1|<host identity>|<pid>|<memfd>|<nonce>".
struct Address {
  std::string identity;
  uint32_t pid = 0;
  int fd = -1;
  uint64_t nonce = 0;
};

std::vector<uint8_t> encode(const Address& a) {
  const std::string s =
      fmt::format("{}|{}|{}|{}|{}", kAddressTag, a.identity, a.pid, a.fd, a.nonce);
  return {s.begin(), s.end()};
}

template <typename T>
bool number(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

Result<Address> decode(std::span<const uint8_t> blob) {
  if (blob.size() > 512) return invalid("an ipc address of {} B (at most 512)", blob.size());
  const std::string s(blob.begin(), blob.end());
  std::vector<std::string_view> f;
  std::string_view rest = s;
  for (size_t p; (p = rest.find('|')) != std::string_view::npos; rest.remove_prefix(p + 1))
    f.push_back(rest.substr(0, p));
  f.push_back(rest);
  Address a;
  if (f.size() != 5 || f[0] != kAddressTag || !number(f[2], a.pid) || !number(f[3], a.fd) ||
      !number(f[4], a.nonce) || a.fd < 0)
    return invalid("'{}' is not an ipc address (a peer of another backend?)",
                   s.substr(0, std::min<size_t>(s.size(), 64)));
  a.identity = std::string(f[1]);
  return a;
}

// One completed write, waiting for its immediate to be appended or its completion delivered.
struct Done {
  uint64_t id = 0;
  PeerId peer = 0;
  bool has_imm = false;
  uint32_t imm = 0;
};

class IpcDomain final : public Domain {
 public:
  ~IpcDomain() override {
    if (seg_.get()) seg_.get()->header.closing.store(1, std::memory_order_release);
    if (stream_) {
      (void)stream_->sync();
      for (auto& f : inflight_) stream_->release(f.event);
    }
    for (Peer& p : peers_) {
      if (p.lane >= 0) p.seg.release_lane(p.lane, owner_tag_);
      if (p.pidfd >= 0) close(p.pidfd);
    }
    for (auto& [h, m] : opened_) ipc::cuda::close_handle(m.base, stream_ ? stream_->device() : 0);
    delete stream_;
  }

  Status open() {
    auto s = Segment::create();
    if (!s) return s.status();
    seg_ = std::move(s).value();
    uint32_t r = 0;
    while (r == 0)
      if (getrandom(&r, sizeof r, 0) != sizeof r) return Status(Code::kSystem, "getrandom failed");
    owner_tag_ = (static_cast<uint64_t>(getpid()) << 32) | r;
    self_ = {ipc::host_identity() + (ipc_host_.empty() ? "" : "/" + ipc_host_),
             static_cast<uint32_t>(getpid()), seg_.fd(), seg_.get()->header.nonce};
    caps_.backend = "ipc";
    caps_.in_place_gpu_writes = true;
    caps_.provider = ipc::cuda::built() ? "cuda-ipc+cma" : "cma";
    caps_.imm_bytes = 4;
    caps_.max_msg = UINT64_MAX;  // no limit of its own (the engine still splits at max_write)
    caps_.device_memory = ipc::cuda::built();
    caps_.manual_progress = true;  // immediates reach the counters only through poll()
    caps_.virt_addr = false;
    caps_.ordered_writes = true;  // one stream, or synchronous syscalls: in posting order
    return Status::ok();
  }

  const Capabilities& caps() const override { return caps_; }
  std::vector<uint8_t> address() const override { return encode(self_); }
  void set_host(const std::string& h) { ipc_host_ = h; }

  Result<PeerId> connect(std::span<const uint8_t> peer_address) override {
    auto a = decode(peer_address);
    if (!a) return a.status();
    if (a->identity != self_.identity)
      return invalid(
          "the peer is on another host or in another pid namespace (its identity {}, ours {}): "
          "the ipc backend links processes of one host only",
          a->identity, self_.identity);
    for (size_t i = 0; i < peers_.size(); ++i)  // connecting again keeps the connection
      if (peers_[i].pid == a->pid && peers_[i].nonce == a->nonce) return static_cast<PeerId>(i);
    auto seg = Segment::attach(a->pid, a->fd, a->nonce);
    if (!seg) return seg.status();
    Peer p;
    p.pid = a->pid;
    p.nonce = a->nonce;
    p.seg = std::move(seg).value();
    p.lane = p.seg.claim_lane(owner_tag_);
    if (p.lane < 0)
      return Status(Code::kRemote, fmt::format("process {} hears {} writers already (the ipc "
                                               "backend's limit): no lane is free",
                                               a->pid, ipc::kLanes));
    p.pidfd = static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(a->pid), 0));
    peers_.push_back(std::move(p));
    return static_cast<PeerId>(peers_.size() - 1);
  }

  Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) override {
    if (!base) return invalid("ipc: cannot register a null region");
    uint32_t index;
    if (!free_slots_.empty()) {
      index = free_slots_.back();
      free_slots_.pop_back();
    } else if (next_slot_ < ipc::kSlots) {
      index = next_slot_++;
    } else {
      return Status(Code::kTransport,
                    fmt::format("ipc: {} regions registered, the backend's limit", ipc::kSlots));
    }
    Slot& s = seg_.get()->slots[index];
    s.len = len;
    s.va = reinterpret_cast<uint64_t>(base);
    s.kind = static_cast<uint32_t>(kind == MemKind::kCuda ? SlotKind::kCuda : SlotKind::kHost);
    s.device = -1;
    s.offset = 0;
    if (kind == MemKind::kCuda) {
      auto x = ipc::cuda::export_region(base, len);
      if (!x) {
        free_slots_.push_back(index);
        return x.status();
      }
      if (Status st = use_device(x->device); !st) {
        free_slots_.push_back(index);
        return st;
      }
      s.device = x->device;
      s.offset = x->offset;
      std::memcpy(s.handle, x->handle, ipc::kHandleBytes);
    }
    const uint64_t key = (static_cast<uint64_t>(++generation_) << 32) | index;
    s.tag.store(key, std::memory_order_release);
    LocalMr mr;
    mr.id = index;
    mr.base = base;
    mr.len = len;
    mr.remote = {0, key, len};
    local_[index] = {base, len, kind};
    return mr;
  }

  Status deregister(const LocalMr& mr) override {
    auto it = local_.find(mr.id);
    if (it == local_.end()) return invalid("ipc: region {} is not registered", mr.id);
    seg_.get()->slots[mr.id].tag.store(0, std::memory_order_release);
    local_.erase(it);
    free_slots_.push_back(mr.id);
    return Status::ok();
  }

  PostResult post(std::span<const WriteOp> ops) override {
    PostResult r;
    bool on_stream = false;
    std::vector<Done> batch;
    for (const WriteOp& op : ops) {
      if (inflight_.size() >= kMaxInflightMarks) break;  // back-pressure: poll, then post again
      Status s = write(op, on_stream);
      if (!s) {
        r.error = std::move(s);
        break;
      }
      ++r.taken;
      if (on_stream)
        batch.push_back({op.id, op.peer, op.has_imm, op.imm});
      else
        finished_.push_back({op.id, op.peer, op.has_imm, op.imm});
    }
    if (!batch.empty()) {
      auto ev = stream_->mark();
      if (!ev) {  // the copies went out but cannot be tracked: each fails by name
        for (const Done& d : batch) errors_.push_back({d.id, ev.status()});
      } else {
        inflight_.push_back({*ev, std::move(batch)});
      }
    }
    return r;
  }

  Result<void*> device_window(PeerId peer, const RemoteKey& dst, uint64_t off,
                              uint64_t len) override {
    if (peer >= peers_.size()) return invalid("ipc: a device window on unknown peer {}", peer);
    Peer& p = peers_[peer];
    if (peer_gone(p)) return gone(p);
    auto t = target(p, dst.key);
    if (!t) return t.status();
    if (t->kind != SlotKind::kCuda)
      return invalid("ipc: process {}'s region {:#x} is host memory: no device window", p.pid,
                     dst.key);
    if (!within(off, len, t->len))
      return Status(Code::kRemote,
                    fmt::format("ipc: a {} B window at offset {} runs past process {}'s region "
                                "({} B)",
                                len, off, p.pid, t->len));
    // Another GPU's tensor, mapped here with peer access (cudaIpcMemLazyEnablePeerAccess):
    // kernels of this device write it over NVLink where the devices can reach each other.
    if (p.pid != self_.pid && stream_ && !ipc::cuda::can_access_peer(stream_->device(), t->device))
      return invalid(
          "ipc: process {}'s region is on device {}, mapped here on device {}, which has no peer "
          "access to it",
          p.pid, t->device, stream_->device());
    return static_cast<void*>(t->ptr + off);
  }

  Result<size_t> poll(std::span<Completion> out) override {
    size_t n = 0;
    drain_lanes(out, n);
    while (!inflight_.empty() && n < out.size()) {  // copies done: their immediates may go
      auto d = stream_->done(inflight_.front().event);
      if (!d) {
        for (const Done& x : inflight_.front().ops) errors_.push_back({x.id, d.status()});
      } else if (!*d) {
        break;
      } else {
        for (const Done& x : inflight_.front().ops) finished_.push_back(x);
      }
      stream_->release(inflight_.front().event);
      inflight_.pop_front();
    }
    while (!errors_.empty() && n < out.size()) {
      Completion& c = out[n++];
      c.kind = Completion::Kind::kError;
      c.id = errors_.front().first;
      c.status = errors_.front().second;
      errors_.pop_front();
    }
    // The immediate first (into the target's lane), then the write's completion; a full lane
    // holds the rest back in order until its owner drains it.
    while (!finished_.empty() && n < out.size()) {
      const Done& d = finished_.front();
      if (d.has_imm && !peers_[d.peer].seg.push(peers_[d.peer].lane, d.imm)) {
        if (peer_gone(peers_[d.peer])) {
          Completion& c = out[n++];
          c.kind = Completion::Kind::kError;
          c.id = d.id;
          c.status = gone(peers_[d.peer]);
          finished_.pop_front();
          continue;
        }
        break;
      }
      Completion& c = out[n++];
      c.kind = Completion::Kind::kWriteDone;
      c.id = d.id;
      c.status = Status::ok();
      finished_.pop_front();
    }
    return n;
  }

 private:
  struct Local {
    void* base;
    uint64_t len;
    MemKind kind;
  };
  // A peer's region as this process writes it.
  struct Target {
    SlotKind kind;
    uint64_t len;
    std::byte* ptr;  // host: the peer's VA (for process_vm_writev); CUDA: mapped here
    int device;      // CUDA: the region's device (where copies run if this domain has none)
  };
  struct Peer {
    uint32_t pid = 0;
    uint64_t nonce = 0;
    Segment seg;
    int lane = -1;
    int pidfd = -1;
    bool gone = false;
    std::unordered_map<uint64_t, Target> targets;  // by remote key
  };
  struct Mark {
    void* event;
    std::vector<Done> ops;
  };

  Status use_device(int device) {
    if (stream_) {
      if (stream_->device() == device) return Status::ok();
      return invalid(
          "ipc: a CUDA region on device {}, but this domain copies on device {} (one "
          "domain per GPU)",
          device, stream_->device());
    }
    auto s = ipc::cuda::Stream::create(device);
    if (!s) return s.status();
    stream_ = *s;
    return Status::ok();
  }

  bool peer_gone(Peer& p) {
    if (p.gone) return true;
    if (p.pidfd >= 0) {
      pollfd f{p.pidfd, POLLIN, 0};
      p.gone = ::poll(&f, 1, 0) > 0;
    } else {
      p.gone = kill(static_cast<pid_t>(p.pid), 0) != 0 && errno == ESRCH;
    }
    if (p.gone) p.targets.clear();
    return p.gone;
  }
  Status gone(const Peer& p) const {
    return Status(Code::kRemote, fmt::format("ipc: the peer's process {} is gone", p.pid));
  }

  // The peer's region named by `key`, checked against its registry slot on every write (a
  // deregistered or re-registered region fails by name rather than taking the bytes).
  Result<Target> target(Peer& p, uint64_t key) {
    const uint32_t index = static_cast<uint32_t>(key);
    if (key == 0 || index >= ipc::kSlots)
      return Status(Code::kRemote, fmt::format("ipc: remote key {:#x} names no slot", key));
    Slot& s = p.seg.get()->slots[index];
    if (s.tag.load(std::memory_order_acquire) != key)
      return Status(Code::kRemote,
                    fmt::format("ipc: process {} no longer has the region of key {:#x} registered",
                                p.pid, key));
    if (auto it = p.targets.find(key); it != p.targets.end()) return it->second;
    Slot copy;
    copy.kind = s.kind;
    copy.device = s.device;
    copy.len = s.len;
    copy.va = s.va;
    copy.offset = s.offset;
    std::memcpy(copy.handle, s.handle, ipc::kHandleBytes);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (s.tag.load(std::memory_order_relaxed) != key)
      return Status(Code::kRemote,
                    fmt::format("ipc: process {} deregistered key {:#x}", p.pid, key));
    Target t{static_cast<SlotKind>(copy.kind), copy.len, reinterpret_cast<std::byte*>(copy.va),
             copy.device};
    if (t.kind == SlotKind::kCuda) {
      if (p.pid == self_.pid) {  // a peer in this very process: its pointer is ours
      } else {
        if (!stream_)
          if (Status st = use_device(copy.device); !st) return st;
        std::array<uint8_t, ipc::kHandleBytes> h;
        std::memcpy(h.data(), copy.handle, h.size());
        auto m = opened_.find(h);
        if (m == opened_.end()) {
          auto mapped = ipc::cuda::open_handle(h.data(), stream_->device());
          if (!mapped) return mapped.status();
          m = opened_.emplace(h, *mapped).first;
        }
        if (copy.offset > m->second.size || copy.len > m->second.size - copy.offset)
          return Status(Code::kRemote,
                        fmt::format("ipc: process {}'s region {:#x} ({} B at offset {}) runs past "
                                    "its allocation ({} B)",
                                    p.pid, key, copy.len, copy.offset, m->second.size));
        t.ptr = static_cast<std::byte*>(m->second.base) + copy.offset;
      }
    } else if (t.kind != SlotKind::kHost) {
      return Status(Code::kRemote,
                    fmt::format("ipc: process {}'s slot {} has kind {}", p.pid, index, copy.kind));
    }
    p.targets.emplace(key, t);
    return t;
  }

  // One write, done now (host to host) or enqueued on the stream (`on_stream`).
  Status write(const WriteOp& op, bool& on_stream) {
    on_stream = false;
    if (op.in_place) return in_place(op, on_stream);
    auto src = op.src ? local_.find(op.src->id) : local_.end();
    if (src == local_.end()) return invalid("ipc: write {} from an unregistered region", op.id);
    if (op.peer >= peers_.size())
      return invalid("ipc: write {} to unknown peer {}", op.id, op.peer);
    Peer& p = peers_[op.peer];
    if (peer_gone(p)) return gone(p);
    if (!within(op.src_off, op.len, src->second.len))
      return invalid("ipc: write {} reads past its source region", op.id);
    auto t = target(p, op.dst.key);
    if (!t) return t.status();
    if (!within(op.dst_off, op.len, t->len))
      return Status(Code::kRemote,
                    fmt::format("ipc: a {} B write at offset {} runs past process {}'s region "
                                "({} B)",
                                op.len, op.dst_off, p.pid, t->len));
    if (op.len == 0) return Status::ok();
    const auto* from = static_cast<const std::byte*>(src->second.base) + op.src_off;
    std::byte* to = t->ptr + op.dst_off;
    const bool src_cuda = src->second.kind == MemKind::kCuda;
    if (t->kind == SlotKind::kCuda || (src_cuda && p.pid == self_.pid)) {
      if (!stream_)  // host shards into GPU memory: copies run on the target's device
        if (Status st = use_device(std::max(t->device, 0)); !st) return st;
      on_stream = true;
      return stream_->copy(to, from, op.len);
    }
    if (src_cuda) {  // GPU to another process's host memory: through a local bounce buffer
      bounce_.resize(op.len);
      if (Status s = stream_->copy(bounce_.data(), from, op.len); !s) return s;
      if (Status s = stream_->sync(); !s) return s;
      from = bounce_.data();
    }
    if (p.pid == self_.pid) {
      std::memcpy(to, from, op.len);
      return Status::ok();
    }
    iovec local{const_cast<std::byte*>(from), op.len};
    iovec remote{to, op.len};
    for (uint64_t done = 0; done < op.len;) {
      const ssize_t w = process_vm_writev(static_cast<pid_t>(p.pid), &local, 1, &remote, 1, 0);
      if (w <= 0) {
        if (errno == ESRCH) return gone(p);
        return Status(
            Code::kRemote,
            fmt::format("ipc: process_vm_writev into process {} ({} B at {}): {}{}", p.pid,
                        op.len - done, static_cast<void*>(remote.iov_base), std::strerror(errno),
                        errno == EPERM ? " (ptrace is restricted: same user and "
                                         "kernel.yama.ptrace_scope 0 are needed)"
                                       : ""));
      }
      done += static_cast<uint64_t>(w);
      local.iov_base = static_cast<std::byte*>(local.iov_base) + w;
      local.iov_len -= static_cast<size_t>(w);
      remote.iov_base = static_cast<std::byte*>(remote.iov_base) + w;
      remote.iov_len -= static_cast<size_t>(w);
    }
    return Status::ok();
  }

  // A write whose bytes a kernel already put through a device window: checked as a write is,
  // and its immediate ordered behind the stream's earlier copies (a mark with no copy).
  Status in_place(const WriteOp& op, bool& on_stream) {
    if (op.peer >= peers_.size())
      return invalid("ipc: write {} to unknown peer {}", op.id, op.peer);
    Peer& p = peers_[op.peer];
    if (peer_gone(p)) return gone(p);
    auto t = target(p, op.dst.key);
    if (!t) return t.status();
    if (t->kind != SlotKind::kCuda)
      return invalid("ipc: in-place write {} into host memory of process {}", op.id, p.pid);
    if (!within(op.dst_off, op.len, t->len))
      return Status(Code::kRemote,
                    fmt::format("ipc: a {} B in-place write at offset {} runs past process {}'s "
                                "region ({} B)",
                                op.len, op.dst_off, p.pid, t->len));
    on_stream = stream_ != nullptr;
    return Status::ok();
  }

  // Every lane of this domain's segment: immediates other processes appended.
  void drain_lanes(std::span<Completion> out, size_t& n) {
    ipc::Layout* m = seg_.get();
    const uint32_t used =
        std::min(m->header.lanes_used.load(std::memory_order_acquire), ipc::kLanes);
    for (uint32_t i = 0; i < used && n < out.size(); ++i) {
      ipc::Lane& l = m->lanes[i];
      uint64_t tail = l.tail.load(std::memory_order_relaxed);
      const uint64_t head = l.head.load(std::memory_order_acquire);
      if (head - tail > ipc::kRing)
        tail = head - ipc::kRing;  // a corrupt cursor loses, not crashes
      while (tail < head && n < out.size()) {
        Completion& c = out[n++];
        c.kind = Completion::Kind::kImm;
        c.imm = l.imm[tail % ipc::kRing];
        c.status = Status::ok();
        ++tail;
      }
      l.tail.store(tail, std::memory_order_release);
    }
  }

  Capabilities caps_;
  Segment seg_;
  Address self_;
  std::string ipc_host_;
  uint64_t owner_tag_ = 0;
  uint32_t generation_ = 0;
  uint32_t next_slot_ = 0;
  std::vector<uint32_t> free_slots_;
  std::unordered_map<uint32_t, Local> local_;
  std::vector<Peer> peers_;
  std::map<std::array<uint8_t, ipc::kHandleBytes>, ipc::cuda::Mapping> opened_;
  ipc::cuda::Stream* stream_ = nullptr;
  std::deque<Mark> inflight_;
  std::deque<Done> finished_;
  std::deque<std::pair<uint64_t, Status>> errors_;
  std::vector<std::byte> bounce_;
};

}  // namespace

Result<std::unique_ptr<Domain>> open_ipc_domain(const DomainConfig& cfg) {
  auto d = std::make_unique<IpcDomain>();
  if (cfg.ipc_host.find('|') != std::string::npos)
    return invalid("ipc: a host name with '|' ('{}')", cfg.ipc_host);
  d->set_host(cfg.ipc_host);
  if (Status s = d->open(); !s) return s;
  return std::unique_ptr<Domain>(std::move(d));
}

}  // namespace weightcast::transport
