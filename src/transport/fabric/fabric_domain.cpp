// libfabric backend: FI_EP_RDM endpoints, FI_RMA writes with FI_REMOTE_CQ_DATA, a
// FI_CQ_FORMAT_DATA completion queue. Honours the provider's mr_mode bits (local descriptors,
// virtual or offset addressing, provider keys, endpoint-bound MRs). FI_EAGAIN is back-pressure.
#include "fabric_domain.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <sys/uio.h>

#include <cstdlib>
#include <cstring>
#include <deque>

#include "../ipc/ipc_cuda.h"

namespace weightcast::transport {

namespace {

std::string fi_err(const char* call, ssize_t rc) {
  return fmt::format("{}: -{} ({})", call, -rc, fi_strerror(static_cast<int>(-rc)));
}

// Owned per in-flight op; starts with fi_context2 as FI_CONTEXT(2) providers require.
struct OpContext {
  fi_context2 fi;
  uint64_t id;
};

class FabricDomain final : public Domain {
 public:
  ~FabricDomain() override {
    for (auto& [id, mr] : mrs_) fi_close(&mr->fid);
    if (ep_) fi_close(&ep_->fid);
    if (av_) fi_close(&av_->fid);
    if (cq_) fi_close(&cq_->fid);
    if (domain_) fi_close(&domain_->fid);
    if (fabric_) fi_close(&fabric_->fid);
    if (info_) fi_freeinfo(info_);
  }

  static int getinfo(const DomainConfig& cfg, const char* node, bool hmem, fi_info** list) {
    fi_info* hints = fi_allocinfo();
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_WRITE | FI_REMOTE_WRITE | (hmem ? FI_HMEM : 0);
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY |
                                  FI_MR_ENDPOINT | (hmem ? FI_MR_HMEM : 0);
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->fabric_attr->prov_name = strdup(cfg.provider.c_str());
    if (node) hints->addr_format = FI_SOCKADDR_IN;  // verbs would otherwise answer in AF_IB
    const int rc = fi_getinfo(FI_VERSION(1, 17), node, nullptr, node ? FI_SOURCE : 0, hints, list);
    fi_freeinfo(hints);
    return rc;
  }

  // FI_HMEM claimed: register a small GPU buffer once, so that a claim the provider cannot keep
  // (a libfabric built without CUDA) degrades to staging instead of failing every registration.
  void probe_device_memory() {
    if (!caps_.device_memory) return;
    auto buf = ipc::cuda::alloc_probe(1 << 16);
    if (!buf) {
      caps_.device_memory = false;
      return;
    }
    auto mr = register_cuda(*buf, 1 << 16);
    caps_.device_memory = mr.is_ok();
    if (mr) deregister(*mr);
    ipc::cuda::free_probe(*buf);
  }

  Status open(const DomainConfig& cfg) {
    // ofi_rxm sizes its receive pools for FI_UNIVERSE_SIZE peers (256 unless set) and touches
    // them page by page, oldest first: ~80 MB of RSS that grows for thousands of steps before it
    // is flat. The job knows its size; a user's own setting wins. (Read once per process, when
    // the first domain opens.)
    if (cfg.universe > 0)
      ::setenv("FI_UNIVERSE_SIZE", std::to_string(std::max<uint32_t>(cfg.universe, 16)).c_str(), 0);
    if (const char* c = std::getenv("WEIGHTCAST_FI_COMPLETION")) {
      const std::string v = c;
      if (v == "transmit") completion_ = FI_TRANSMIT_COMPLETE;
      if (v == "default") completion_ = 0;  // whatever the provider's default is
    }
    // GPU memory registered with the NIC (FI_HMEM, as EFA offers) when this build has CUDA and
    // this process sees a GPU; a provider without it (Debian's tcp) is asked again without, and
    // GPU tensors are then staged through host memory by the executor. WEIGHTCAST_FI_HMEM=0 never
    // asks, =1 always asks (the claim is still probed with a GPU buffer before it is believed).
    const char* hmem_env = std::getenv("WEIGHTCAST_FI_HMEM");
    const std::string hmem = hmem_env ? hmem_env : "";
    const bool want_hmem =
        hmem == "1" || (hmem != "0" && ipc::cuda::built() && ipc::cuda::have_device());
    fi_info* list = nullptr;
    const char* node = cfg.address.empty() ? nullptr : cfg.address.c_str();
    int rc = want_hmem ? getinfo(cfg, node, true, &list) : -FI_ENODATA;
    if (rc != 0) rc = getinfo(cfg, node, false, &list);
    if (rc != 0)
      return Status(Code::kTransport,
                    fmt::format("fi_getinfo(provider={}, address={}): {}", cfg.provider,
                                cfg.address.empty() ? "default" : cfg.address, fi_strerror(-rc)));
    // With an address, take the entry bound to exactly that IPv4 address.
    fi_info* pick = list;
    if (node) {
      in_addr want{};
      inet_pton(AF_INET, node, &want);
      pick = nullptr;
      std::string offered;
      for (fi_info* i = list; i && !pick; i = i->next) {
        if (i->addr_format != FI_SOCKADDR_IN || !i->src_addr) {
          offered += fmt::format("{}addr_format {}", offered.empty() ? "" : ", ", i->addr_format);
          continue;
        }
        const in_addr a = reinterpret_cast<const sockaddr_in*>(i->src_addr)->sin_addr;
        if (a.s_addr == want.s_addr) pick = i;
        char ip[INET_ADDRSTRLEN] = "";
        inet_ntop(AF_INET, &a, ip, sizeof ip);
        offered += fmt::format("{}{}", offered.empty() ? "" : ", ", ip);
      }
      if (!pick) {
        fi_freeinfo(list);
        return Status(Code::kTransport,
                      fmt::format("provider {} offers no endpoint bound to {} (it offers: {})",
                                  cfg.provider, cfg.address, offered.empty() ? "none" : offered));
      }
    }
    info_ = fi_dupinfo(pick);
    fi_freeinfo(list);
    caps_.backend = "fabric";
    caps_.provider = info_->fabric_attr->prov_name;
    caps_.imm_bytes = info_->domain_attr->cq_data_size;
    caps_.max_msg = info_->ep_attr->max_msg_size;
    caps_.manual_progress = info_->domain_attr->data_progress == FI_PROGRESS_MANUAL;
    caps_.virt_addr = (info_->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
    caps_.ordered_writes = (info_->tx_attr->msg_order & (FI_ORDER_WAW | FI_ORDER_RMA_WAW)) != 0;
    caps_.device_memory = (info_->caps & FI_HMEM) != 0;
    if (!(info_->caps & FI_RMA))
      return Status(
          Code::kTransport,
          fmt::format("provider {} lacks FI_RMA: one-sided writes are impossible", caps_.provider));
    if (caps_.imm_bytes < 4)
      return Status(Code::kTransport, fmt::format("provider {} gives cq_data_size {} < 4: it "
                                                  "cannot carry weightcast's 32-bit immediates",
                                                  caps_.provider, caps_.imm_bytes));
    mr_mode_ = info_->domain_attr->mr_mode;
    ssize_t r;
    if ((r = fi_fabric(info_->fabric_attr, &fabric_, nullptr)))
      return Status(Code::kTransport, fi_err("fi_fabric", r));
    if ((r = fi_domain(fabric_, info_, &domain_, nullptr)))
      return Status(Code::kTransport, fi_err("fi_domain", r));
    fi_cq_attr cq_attr{};
    cq_attr.format = FI_CQ_FORMAT_DATA;
    cq_attr.size = 8192;
    if ((r = fi_cq_open(domain_, &cq_attr, &cq_, nullptr)))
      return Status(Code::kTransport, fi_err("fi_cq_open", r));
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    if ((r = fi_av_open(domain_, &av_attr, &av_, nullptr)))
      return Status(Code::kTransport, fi_err("fi_av_open", r));
    if ((r = fi_endpoint(domain_, info_, &ep_, nullptr)))
      return Status(Code::kTransport, fi_err("fi_endpoint", r));
    if ((r = fi_ep_bind(ep_, &cq_->fid, FI_TRANSMIT | FI_RECV)))
      return Status(Code::kTransport, fi_err("fi_ep_bind(cq)", r));
    if ((r = fi_ep_bind(ep_, &av_->fid, 0)))
      return Status(Code::kTransport, fi_err("fi_ep_bind(av)", r));
    if ((r = fi_enable(ep_))) return Status(Code::kTransport, fi_err("fi_enable", r));
    probe_device_memory();
    return Status::ok();
  }

  const Capabilities& caps() const override { return caps_; }

  std::vector<uint8_t> address() const override {
    std::vector<uint8_t> a(256);
    size_t len = a.size();
    if (fi_getname(&ep_->fid, a.data(), &len) != 0) return {};
    a.resize(len);
    return a;
  }

  Result<PeerId> connect(std::span<const uint8_t> peer) override {
    fi_addr_t fa = FI_ADDR_UNSPEC;
    const int n = fi_av_insert(av_, peer.data(), 1, &fa, 0, nullptr);
    if (n != 1)
      return Status(Code::kTransport,
                    fmt::format("fi_av_insert({}-byte address): inserted {}", peer.size(), n));
    peers_.push_back(fa);
    return static_cast<PeerId>(peers_.size() - 1);
  }

  Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) override {
    if (kind == MemKind::kCuda && !caps_.device_memory)
      return Status(
          Code::kInvalidArgument,
          fmt::format("provider {} has no FI_HMEM: stage GPU data through pinned host buffers",
                      caps_.provider));
    if (kind == MemKind::kCuda) return register_cuda(base, len);
    fid_mr* mr = nullptr;
    const uint64_t requested = next_key_++;
    ssize_t r =
        fi_mr_reg(domain_, base, len, FI_WRITE | FI_REMOTE_WRITE, 0, requested, 0, &mr, nullptr);
    if (r)
      return Status(Code::kTransport, fi_err(fmt::format("fi_mr_reg(len={})", len).c_str(), r));
    return finish_mr(mr, base, len);
  }

  // GPU memory: fi_mr_regattr with the CUDA interface and the pointer's device.
  Result<LocalMr> register_cuda(void* base, uint64_t len) {
    auto dev = ipc::cuda::device_of(base);
    if (!dev) return dev.status();
    iovec iov{base, len};
    fi_mr_attr attr{};
    attr.mr_iov = &iov;
    attr.iov_count = 1;
    attr.access = FI_WRITE | FI_REMOTE_WRITE;
    attr.requested_key = next_key_++;
    attr.iface = FI_HMEM_CUDA;
    attr.device.cuda = *dev;
    fid_mr* mr = nullptr;
    if (ssize_t r = fi_mr_regattr(domain_, &attr, 0, &mr))
      return Status(
          Code::kTransport,
          fi_err(fmt::format("fi_mr_regattr(FI_HMEM_CUDA, device {}, len={})", *dev, len).c_str(),
                 r));
    return finish_mr(mr, base, len);
  }

  Result<LocalMr> finish_mr(fid_mr* mr, void* base, uint64_t len) {
    ssize_t r = 0;
    if (mr_mode_ & FI_MR_ENDPOINT) {
      if ((r = fi_mr_bind(mr, &ep_->fid, 0)) || (r = fi_mr_enable(mr))) {
        fi_close(&mr->fid);
        return Status(Code::kTransport, fi_err("fi_mr_bind/enable", r));
      }
    }
    LocalMr out;
    out.id = next_mr_id_++;
    out.base = base;
    out.len = len;
    out.desc = fi_mr_desc(mr);
    out.remote = {caps_.virt_addr ? reinterpret_cast<uint64_t>(base) : 0, fi_mr_key(mr), len};
    mrs_[out.id] = mr;
    return out;
  }

  Status deregister(const LocalMr& m) override {
    auto it = mrs_.find(m.id);
    if (it == mrs_.end()) return invalid("deregister: unknown region {}", m.id);
    fi_close(&it->second->fid);
    mrs_.erase(it);
    return Status::ok();
  }

  PostResult post(std::span<const WriteOp> ops) override {
    PostResult res;
    for (const WriteOp& op : ops) {
      if (op.peer >= peers_.size()) {
        res.error = invalid("post: write {} names unknown peer {}", op.id, op.peer);
        return res;
      }
      if (op.in_place) {
        res.error = invalid("post: write {} is in place, which needs the ipc backend", op.id);
        return res;
      }
      // Overflow-safe: an offset near 2^64 must not wrap past the check.
      if (!within(op.src_off, op.len, op.src->len) || !within(op.dst_off, op.len, op.dst.len)) {
        res.error = invalid("post: write {} ({} bytes at src {} dst {}) runs past a region", op.id,
                            op.len, op.src_off, op.dst_off);
        return res;
      }
      OpContext* ctx = alloc_ctx();
      ctx->id = op.id;
      iovec iov{static_cast<char*>(op.src->base) + op.src_off, op.len};
      void* desc = op.src->desc;
      fi_rma_iov rma{op.dst.addr + op.dst_off, op.len, op.dst.key};
      fi_msg_rma msg{};
      msg.msg_iov = &iov;
      msg.desc = &desc;
      msg.iov_count = 1;
      msg.addr = peers_[op.peer];
      msg.rma_iov = &rma;
      msg.rma_iov_count = 1;
      msg.context = ctx;
      msg.data = op.imm;
      const ssize_t r = fi_writemsg(
          ep_, &msg, FI_COMPLETION | completion_ | (op.has_imm ? FI_REMOTE_CQ_DATA : 0));
      if (r == -FI_EAGAIN) {
        free_ctx(ctx);
        break;
      }
      if (r) {
        free_ctx(ctx);
        res.error =
            Status(Code::kTransport,
                   fi_err(fmt::format("fi_writemsg(write {}, len={})", op.id, op.len).c_str(), r));
        return res;
      }
      ++res.taken;
    }
    return res;
  }

  Result<size_t> poll(std::span<Completion> out) override {
    fi_cq_data_entry e[64];
    const size_t want = std::min<size_t>(out.size(), 64);
    const ssize_t n = fi_cq_read(cq_, e, want);
    if (n == -FI_EAGAIN) return size_t{0};
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      if (fi_cq_readerr(cq_, &err, 0) < 0) return Status(Code::kTransport, "fi_cq_readerr failed");
      Completion& c = out[0];
      c.kind = Completion::Kind::kError;
      auto* ctx = static_cast<OpContext*>(err.op_context);
      c.id = ctx ? ctx->id : 0;
      if (ctx) free_ctx(ctx);
      c.status = Status(Code::kRemote,
                        fmt::format("write {} failed: {} (provider errno {}: {})", c.id,
                                    fi_strerror(err.err), err.prov_errno,
                                    fi_cq_strerror(cq_, err.prov_errno, err.err_data, nullptr, 0)));
      return size_t{1};
    }
    if (n < 0) return Status(Code::kTransport, fi_err("fi_cq_read", n));
    for (ssize_t i = 0; i < n; ++i) {
      Completion& c = out[static_cast<size_t>(i)];
      c.status = Status::ok();
      if (e[i].flags & FI_REMOTE_CQ_DATA) {
        c.kind = Completion::Kind::kImm;
        c.imm = static_cast<uint32_t>(e[i].data);
        c.id = 0;
      } else {
        auto* ctx = static_cast<OpContext*>(e[i].op_context);
        c.kind = Completion::Kind::kWriteDone;
        c.id = ctx ? ctx->id : 0;
        if (ctx) free_ctx(ctx);
      }
    }
    return static_cast<size_t>(n);
  }

 private:
  OpContext* alloc_ctx() {
    if (free_.empty()) {
      pool_.emplace_back();
      return &pool_.back();
    }
    OpContext* c = free_.back();
    free_.pop_back();
    return c;
  }
  void free_ctx(OpContext* c) { free_.push_back(c); }

  Capabilities caps_;
  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_av* av_ = nullptr;
  fid_ep* ep_ = nullptr;
  uint64_t mr_mode_ = 0;
  // A write's completion means it reached the target (FI_DELIVERY_COMPLETE), as on RC and SRD
  // NICs; WEIGHTCAST_FI_COMPLETION=transmit|default trades that for speed on providers whose
  // default is weaker (tcp;ofi_rxm: a write to a dead peer then completes once buffered).
  uint64_t completion_ = FI_DELIVERY_COMPLETE;
  uint64_t next_key_ = 1;
  uint32_t next_mr_id_ = 1;
  std::map<uint32_t, fid_mr*> mrs_;
  std::vector<fi_addr_t> peers_;
  std::deque<OpContext> pool_;  // stable addresses
  std::vector<OpContext*> free_;
};

}  // namespace

Result<std::unique_ptr<Domain>> open_fabric_domain(const DomainConfig& cfg) {
  auto d = std::make_unique<FabricDomain>();
  if (Status s = d->open(cfg); !s) return s;
  return std::unique_ptr<Domain>(std::move(d));
}

}  // namespace weightcast::transport
