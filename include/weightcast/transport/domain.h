// One NIC domain: the small interface every backend (libfabric, ibverbs) implements. Plain data
// in and out: WriteOps are posted from a span, Completions polled into one. Back-pressure is not
// an error: post() returns how many ops it took; the caller drives poll() and retries the rest.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::transport {

struct Capabilities {
  std::string backend;   // the BackendInfo name ("fabric", "verbs", "ipc", "hybrid")
  std::string provider;  // e.g. "tcp;ofi_rxm", "efa", "mlx5_0"
  size_t imm_bytes = 0;  // remote CQ data size
  uint64_t max_msg = 0;
  bool device_memory = false;      // can register CUDA memory directly
  bool manual_progress = false;    // data lands only while someone polls
  bool virt_addr = false;          // remote addresses are virtual addresses (else offsets)
  bool ordered_writes = false;     // writes on one connection land in posting order
  bool connect_both_ends = false;  // the target must connect() to its initiator too (RC QPs);
                                   // connections need no warm-up write
  bool split_regions = false;      // register_split: some peers write one place, others another
  // A projection kernel may write a receiver's GPU tensor itself (CUDA IPC mappings): ipc and
  // the hybrid backend's same-host peers.
  bool in_place_gpu_writes = false;
};

enum class MemKind : uint8_t { kHost, kCuda };

// A registered region as a remote peer addresses it through one NIC.
struct RemoteKey {
  uint64_t addr = 0;  // base to which offsets are added (a VA, or 0 for offset addressing)
  uint64_t key = 0;
  uint64_t len = 0;
  uint64_t key2 = 0;  // the hybrid backend: the region's ipc key (addr / key are the NIC's)
};

struct LocalMr {
  uint32_t id = 0;  // backend-internal handle
  void* base = nullptr;
  uint64_t len = 0;
  void* desc = nullptr;  // backend descriptor for local access
  RemoteKey remote;      // what to publish
};

using PeerId = uint32_t;

// [off, off + len) lies inside [0, size), without overflow (off near 2^64 does not wrap).
inline bool within(uint64_t off, uint64_t len, uint64_t size) {
  return len <= size && off <= size - len;
}

struct WriteOp {
  uint64_t id = 0;  // echoed in the completion
  const LocalMr* src = nullptr;
  uint64_t src_off = 0;
  PeerId peer = 0;
  RemoteKey dst;
  uint64_t dst_off = 0;
  uint64_t len = 0;
  bool has_imm = false;
  uint32_t imm = 0;
  // The bytes are already at the destination (written through device_window() by the caller,
  // and complete): only the immediate goes, after the connection's earlier writes landed. `src`
  // is not read. Backends without device windows refuse it.
  bool in_place = false;
};

struct Completion {
  enum class Kind : uint8_t { kWriteDone, kImm, kError };
  Kind kind = Kind::kWriteDone;
  uint64_t id = 0;   // kWriteDone / kError: the op's id
  uint32_t imm = 0;  // kImm
  Status status;     // kError
};

// What post() did: ops[0, taken) went out. When `error` is set, ops[taken] was refused with it
// (it did not go out) and the ops after it were not tried; without an error, taken < ops.size()
// is back-pressure (drive poll(), post the rest again).
struct PostResult {
  size_t taken = 0;
  Status error;
};

class Domain {
 public:
  virtual ~Domain() = default;
  virtual const Capabilities& caps() const = 0;
  // Opaque address blob to hand to peers (through the rendezvous).
  virtual std::vector<uint8_t> address() const = 0;
  virtual Result<PeerId> connect(std::span<const uint8_t> peer_address) = 0;
  virtual Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) = 0;
  virtual Status deregister(const LocalMr& mr) = 0;
  virtual PostResult post(std::span<const WriteOp> ops) = 0;
  // A pointer, in this process and on this domain's CUDA device, to [off, off + len) of the
  // peer's registered GPU region `dst`, for kernels to write straight into (then an in_place
  // write delivers its immediate). Only the ipc backend maps peers' GPU memory; others, host
  // regions and regions on another device say why not.
  virtual Result<void*> device_window(PeerId peer, const RemoteKey& dst, uint64_t off,
                                      uint64_t len) {
    (void)peer, (void)dst, (void)off, (void)len;
    return invalid("the {} backend writes through its NICs: no device windows", caps().backend);
  }
  // A region written in two places, by peer: the peers this domain reaches with copies into the
  // memory itself (the hybrid backend's peers of this host, over ipc) write `direct` (of `kind`),
  // the others write `landing` (host memory, `len` bytes too), from which its owner copies their
  // bytes in. So a GPU tensor takes same-host writes directly and NIC writes staged. Only
  // backends with caps().split_regions have it.
  virtual Result<LocalMr> register_split(void* direct, MemKind kind, void* landing, uint64_t len) {
    (void)direct, (void)kind, (void)landing, (void)len;
    return invalid("the {} backend writes every peer alike: no split regions", caps().backend);
  }
  // Whether the peer at `peer_address` writes a split region's direct side (else its landing).
  virtual bool writes_direct(std::span<const uint8_t> peer_address) const {
    (void)peer_address;
    return false;
  }
  // Completions into `out`. An error of the completion queue itself (not of one op) is an error
  // value; the caller reports it, since ops in flight on this NIC may never complete.
  virtual Result<size_t> poll(std::span<Completion> out) = 0;
};

struct DomainConfig {
  // "fabric", "verbs", "ipc", or "hybrid" (peers of this host over ipc, the others over
  // libfabric; "hybrid:verbs" over ibverbs)
  std::string backend = "fabric";
  std::string provider = "tcp";  // libfabric provider name, or verbs device name
  std::string address;           // local IP to bind (fabric), empty: the provider's default
  int port = 1;                  // verbs
  int gid_index = -1;            // verbs: -1 picks the first RoCE v2 IPv4 GID, else index 0
  uint32_t rank = 0;             // verbs: this process's index among its peers (QP slot)
  uint32_t max_peers = 16;       // verbs: RC QPs created up front, one per peer slot
  uint32_t universe = 0;  // fabric: peers of the job (FI_UNIVERSE_SIZE unless set); 0: default
  uint64_t max_write = 16ull << 20;  // longer NIC shards go as several writes (also capped by
                                     // the provider's max_msg); the immediate rides the last
  // ipc: tell peers this host is `ipc_host` (added to the real identity), so that processes of
  // one machine look like two hosts' to each other. For tests of the hybrid backend only.
  std::string ipc_host;
  // A fault-injecting layer over the real backend (transport/fault_domain.h), for tests:
  // e.g. "fail_post=7,hold_arrivals=3:2". Empty: none. WEIGHTCAST_FAULTS sets it too.
  std::string faults;
};

// What a backend is to the layers above it. Adding a backend is one row of the table in
// transport/domain.cpp: the API reads its NIC naming and how the plan costs its links, the CLI
// its name and summary; the executor asks the domain's Capabilities, never the name.
struct BackendInfo {
  const char* name;               // JobConfig.backend / DomainConfig.backend
  const char* summary;            // one line, for --help and errors
  bool nics_are_devices = false;  // nics name RDMA devices (mlx5_0), else local IP addresses
  enum class Links { kNic, kSameHost, kHybrid };
  // How the plan costs a pair: on the NICs; on the host's ipc link (every peer on one host,
  // plan::Options::ipc_links); per pair, ipc within a host and the NICs between (hybrid_links).
  Links links = Links::kNic;
  Result<std::unique_ptr<Domain>> (*open)(const DomainConfig&) = nullptr;
};
std::span<const BackendInfo> backends();
const BackendInfo* find_backend(std::string_view name);  // null: no such backend
std::string backend_names();                             // "fabric, verbs, ..., or hybrid:verbs"

// The one place a backend is chosen (from the table above).
Result<std::unique_ptr<Domain>> open_domain(const DomainConfig& cfg);

}  // namespace weightcast::transport
