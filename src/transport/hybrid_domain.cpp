// The hybrid backend (hybrid_domain.h): a peer's packed address says which host it is on; peers
// of this host are connected (and written) through the ipc domain, the others through the NIC
// domain. Keys: RemoteKey addr / key are the NIC side's, key2 the ipc side's.
#include "hybrid_domain.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>
#include <unordered_map>

#include "fabric/fabric_domain.h"
#include "ipc/ipc_domain.h"
#include "verbs/verbs_domain.h"
#include "weightcast/transport/nic_group.h"

namespace weightcast::transport {

namespace {

// The host identity an ipc address carries ("wcipc1|<identity>|..."), empty if it has none.
std::string_view ipc_identity(std::span<const uint8_t> a) {
  const std::string_view s(reinterpret_cast<const char*>(a.data()), a.size());
  const size_t p = s.find('|');
  if (p == std::string_view::npos || s.substr(0, p) != "wcipc1") return {};
  const size_t q = s.find('|', p + 1);
  return q == std::string_view::npos ? std::string_view{} : s.substr(p + 1, q - p - 1);
}

class HybridDomain final : public Domain {
 public:
  HybridDomain(std::unique_ptr<Domain> ipc, std::unique_ptr<Domain> nic)
      : ipc_(std::move(ipc)), nic_(std::move(nic)) {
    const Capabilities &a = ipc_->caps(), &b = nic_->caps();
    caps_.backend = "hybrid";
    caps_.in_place_gpu_writes = true;
    caps_.provider = a.provider + "|" + b.provider;
    caps_.imm_bytes = std::min(a.imm_bytes, b.imm_bytes);
    caps_.max_msg = std::min(a.max_msg, b.max_msg);
    caps_.device_memory = a.device_memory && b.device_memory;  // both ways must reach a tensor
    caps_.manual_progress = a.manual_progress || b.manual_progress;
    caps_.virt_addr = b.virt_addr;
    caps_.ordered_writes = a.ordered_writes && b.ordered_writes;
    caps_.connect_both_ends = b.connect_both_ends;
    caps_.split_regions = true;
    const std::vector<uint8_t> own = ipc_->address();
    self_ = std::string(ipc_identity(own));
  }

  const Capabilities& caps() const override { return caps_; }

  std::vector<uint8_t> address() const override {
    return pack_addresses({ipc_->address(), nic_->address()});
  }

  Result<PeerId> connect(std::span<const uint8_t> peer_address) override {
    auto parts = unpack_addresses(peer_address);
    if (!parts) return parts.status();
    if (parts->size() != 2)
      return invalid(
          "a hybrid address has an ipc and a NIC part, this one {} part(s) (a peer of "
          "another backend?)",
          parts->size());
    const bool local = is_local((*parts)[0]);
    auto p = local ? ipc_->connect((*parts)[0]) : nic_->connect((*parts)[1]);
    if (!p) return p.status();
    for (size_t i = 0; i < peers_.size(); ++i)  // connecting again keeps the connection
      if (peers_[i].local == local && peers_[i].inner == *p) return static_cast<PeerId>(i);
    peers_.push_back({local, *p});
    return static_cast<PeerId>(peers_.size() - 1);
  }

  Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) override {
    return register_both(base, kind, base, kind, len);
  }

  // The ipc side registers `direct`, the NIC side `landing`: same-host peers write the memory
  // itself, the others the landing area.
  Result<LocalMr> register_split(void* direct, MemKind kind, void* landing, uint64_t len) override {
    return register_both(direct, kind, landing, MemKind::kHost, len);
  }

  bool writes_direct(std::span<const uint8_t> peer_address) const override {
    auto parts = unpack_addresses(peer_address);
    return parts && parts->size() == 2 && is_local((*parts)[0]);
  }

  Status deregister(const LocalMr& mr) override {
    auto it = mrs_.find(mr.id);
    if (it == mrs_.end()) return invalid("hybrid: region {} is not registered", mr.id);
    Status a = ipc_->deregister(it->second.ipc);
    Status b = nic_->deregister(it->second.nic);
    mrs_.erase(it);
    return a ? b : a;
  }

  // Runs of ops to one side go out together; an op the side refused ends the call with its error.
  PostResult post(std::span<const WriteOp> ops) override {
    PostResult r;
    std::vector<WriteOp> run;
    while (r.taken < ops.size()) {
      run.clear();
      bool local = false;
      for (size_t i = r.taken; i < ops.size(); ++i) {
        const WriteOp& op = ops[i];
        if (op.peer >= peers_.size()) {
          if (run.empty()) {
            r.error = invalid("hybrid: write {} to unknown peer {}", op.id, op.peer);
            return r;
          }
          break;
        }
        const Peer& p = peers_[op.peer];
        if (!run.empty() && p.local != local) break;
        local = p.local;
        WriteOp in = op;
        in.peer = p.inner;
        if (op.src) {
          auto m = mrs_.find(op.src->id);
          if (m == mrs_.end()) {
            if (run.empty()) {
              r.error = invalid("hybrid: write {} from an unregistered region", op.id);
              return r;
            }
            break;
          }
          in.src = local ? &m->second.ipc : &m->second.nic;
        }
        in.dst = local ? RemoteKey{0, op.dst.key2, op.dst.len, 0}
                       : RemoteKey{op.dst.addr, op.dst.key, op.dst.len, 0};
        run.push_back(in);
      }
      PostResult s = (local ? ipc_ : nic_)->post(run);
      r.taken += s.taken;
      if (!s.error.is_ok()) {
        r.error = std::move(s.error);
        return r;
      }
      if (s.taken < run.size()) return r;  // back-pressure
    }
    return r;
  }

  Result<size_t> poll(std::span<Completion> out) override {
    // Both sides each time, the one polled first alternating so that neither starves the other.
    Domain* first = flip_ ? nic_.get() : ipc_.get();
    Domain* second = flip_ ? ipc_.get() : nic_.get();
    flip_ = !flip_;
    auto a = first->poll(out);
    if (!a || *a == out.size()) return a;
    auto b = second->poll(out.subspan(*a));
    if (!b) return b;
    return *a + *b;
  }

  Result<void*> device_window(PeerId peer, const RemoteKey& dst, uint64_t off,
                              uint64_t len) override {
    if (peer >= peers_.size()) return invalid("hybrid: a device window on unknown peer {}", peer);
    if (!peers_[peer].local)
      return invalid("hybrid: the peer is on another host, written through the NICs");
    return ipc_->device_window(peers_[peer].inner, RemoteKey{0, dst.key2, dst.len, 0}, off, len);
  }

 private:
  bool is_local(std::span<const uint8_t> ipc_address) const {
    return !self_.empty() && ipc_identity(ipc_address) == self_;
  }

  Result<LocalMr> register_both(void* ipc_base, MemKind ipc_kind, void* nic_base, MemKind nic_kind,
                                uint64_t len) {
    auto a = ipc_->register_memory(ipc_base, len, ipc_kind);
    if (!a) return a.status();
    auto b = nic_->register_memory(nic_base, len, nic_kind);
    if (!b) {
      (void)ipc_->deregister(*a);
      return b.status();
    }
    const uint32_t id = next_id_++;
    mrs_[id] = {*a, *b};
    LocalMr mr;
    mr.id = id;
    mr.base = ipc_base;
    mr.len = len;
    mr.desc = b->desc;
    mr.remote = {b->remote.addr, b->remote.key, len, a->remote.key};
    return mr;
  }

  struct Peer {
    bool local;
    PeerId inner;
  };
  struct Mr {
    LocalMr ipc, nic;
  };
  std::unique_ptr<Domain> ipc_, nic_;
  Capabilities caps_;
  std::string self_;
  std::vector<Peer> peers_;
  std::unordered_map<uint32_t, Mr> mrs_;
  uint32_t next_id_ = 1;
  bool flip_ = false;
};

}  // namespace

Result<std::unique_ptr<Domain>> open_hybrid_domain(const DomainConfig& cfg,
                                                   const std::string& nic_backend) {
  // (The sides are opened bare: faults wrap the hybrid domain as a whole.)
  DomainConfig ic = cfg, nc = cfg;
  ic.backend = "ipc";
  nc.backend = nic_backend;
  auto i = open_ipc_domain(ic);
  if (!i) return i.status();
  auto n = nic_backend == "verbs" ? open_verbs_domain(nc) : open_fabric_domain(nc);
  if (!n) return n.status();
  return std::unique_ptr<Domain>(new HybridDomain(std::move(i).value(), std::move(n).value()));
}

}  // namespace weightcast::transport
