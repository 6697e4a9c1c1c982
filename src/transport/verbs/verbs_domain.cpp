// ibverbs backend: one RC QP per peer slot (created up front so the address blob can carry their
// numbers), all sharing one CQ and one SRQ of zero-byte receives that are re-posted on arrival.
// Writes are IBV_WR_RDMA_WRITE_WITH_IMM with the imm in network byte order. Host memory is
// registered with relaxed ordering when the library has it; CUDA memory through dma-buf
// (cuMemGetHandleForAddressRange, found with dlopen so nothing links against the driver) with a
// fallback to plain registration (nvidia-peermem).
#include "verbs_domain.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <infiniband/verbs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "verbs_logic.h"

namespace weightcast::transport {

namespace {

constexpr int kSrqDepth = 1024;

std::string errno_str(const char* call) {
  return fmt::format("{}: {}", call, std::strerror(errno));
}

// dma-buf export of CUDA memory, when the driver offers it.
int cuda_dmabuf_fd(void* base, uint64_t len) {
  using Fn = int (*)(int*, uint64_t, size_t, int, unsigned long long);
  static Fn fn = [] {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    return h ? reinterpret_cast<Fn>(dlsym(h, "cuMemGetHandleForAddressRange")) : nullptr;
  }();
  if (!fn) return -1;
  int fd = -1;
  constexpr int kDmaBufFd = 1;  // CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD
  return fn(&fd, reinterpret_cast<uint64_t>(base), len, kDmaBufFd, 0) == 0 ? fd : -1;
}

class VerbsDomain final : public Domain {
 public:
  ~VerbsDomain() override {
    for (auto& [id, mr] : mrs_) ibv_dereg_mr(mr);
    for (ibv_qp* q : qps_) ibv_destroy_qp(q);
    if (srq_) ibv_destroy_srq(srq_);
    if (cq_) ibv_destroy_cq(cq_);
    if (pd_) ibv_dealloc_pd(pd_);
    if (ctx_) ibv_close_device(ctx_);
  }

  Status open(const DomainConfig& cfg) {
    cfg_ = cfg;
    int n = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (!list || n == 0) {
      if (list) ibv_free_device_list(list);
      return Status(Code::kTransport, "ibv_get_device_list: no RDMA device on this machine");
    }
    ibv_device* dev = nullptr;
    std::string names;
    for (int i = 0; i < n; ++i) {
      names += fmt::format("{}{}", i ? ", " : "", ibv_get_device_name(list[i]));
      if (cfg.provider.empty() || cfg.provider == "verbs" ||
          cfg.provider == ibv_get_device_name(list[i]))
        dev = dev ? dev : list[i];
    }
    if (!dev) {
      ibv_free_device_list(list);
      return Status(Code::kTransport,
                    fmt::format("no RDMA device named '{}' (have: {})", cfg.provider, names));
    }
    caps_.backend = "verbs";
    caps_.provider = ibv_get_device_name(dev);
    ctx_ = ibv_open_device(dev);
    ibv_free_device_list(list);
    if (!ctx_) return Status(Code::kTransport, errno_str("ibv_open_device"));
    ibv_port_attr port{};
    if (ibv_query_port(ctx_, static_cast<uint8_t>(cfg.port), &port))
      return Status(Code::kTransport,
                    errno_str(fmt::format("ibv_query_port({})", cfg.port).c_str()));
    addr_.port = static_cast<uint8_t>(cfg.port);
    addr_.lid = port.lid;
    addr_.mtu = static_cast<uint8_t>(port.active_mtu);
    addr_.rank = cfg.rank;
    gid_index_ = cfg.gid_index >= 0 ? cfg.gid_index : pick_gid(port.gid_tbl_len);
    if (ibv_query_gid(ctx_, addr_.port, gid_index_, &addr_.gid))
      return Status(Code::kTransport,
                    errno_str(fmt::format("ibv_query_gid(index={})", gid_index_).c_str()));
    ibv_device_attr da{};
    if (ibv_query_device(ctx_, &da)) return Status(Code::kTransport, errno_str("ibv_query_device"));
    caps_.imm_bytes = 4;
    caps_.max_msg = port.max_msg_sz;
    caps_.virt_addr = true;
    caps_.ordered_writes = true;     // RC: writes on one QP are placed in order
    caps_.connect_both_ends = true;  // an RC QP reaches RTR only knowing its peer's QP number
    caps_.device_memory = true;      // dma-buf or peer memory; register_memory reports which failed
    if (!(pd_ = ibv_alloc_pd(ctx_))) return Status(Code::kTransport, errno_str("ibv_alloc_pd"));
    const int cqe = std::min(da.max_cqe, 16384);
    if (!(cq_ = ibv_create_cq(ctx_, cqe, nullptr, nullptr, 0)))
      return Status(Code::kTransport, errno_str("ibv_create_cq"));
    ibv_srq_init_attr sa{};
    sa.attr.max_wr = std::min(kSrqDepth, da.max_srq_wr);
    sa.attr.max_sge = 1;
    if (!(srq_ = ibv_create_srq(pd_, &sa)))
      return Status(Code::kTransport, errno_str("ibv_create_srq"));
    for (uint32_t i = 0; i < sa.attr.max_wr; ++i)
      if (Status s = post_recv(); !s) return s;
    for (uint32_t p = 0; p < cfg.max_peers; ++p) {
      ibv_qp_init_attr qa{};
      qa.send_cq = cq_;
      qa.recv_cq = cq_;
      qa.srq = srq_;
      qa.qp_type = IBV_QPT_RC;
      qa.cap.max_send_wr = std::min(1024, da.max_qp_wr);
      qa.cap.max_send_sge = 1;
      ibv_qp* q = ibv_create_qp(pd_, &qa);
      if (!q) return Status(Code::kTransport, errno_str("ibv_create_qp"));
      qps_.push_back(q);
      verbs::Transition t = verbs::to_init(addr_.port);
      if (ibv_modify_qp(q, &t.attr, t.mask))
        return Status(Code::kTransport, errno_str("ibv_modify_qp(INIT)"));
      addr_.qpns.push_back(q->qp_num);
    }
    linked_.resize(qps_.size());
    return Status::ok();
  }

  const Capabilities& caps() const override { return caps_; }
  std::vector<uint8_t> address() const override { return addr_.serialize(); }

  Result<PeerId> connect(std::span<const uint8_t> blob) override {
    auto peer = verbs::Address::parse(blob);
    if (!peer) return peer.status();
    if (peer->rank >= qps_.size())
      return invalid("verbs peer rank {} has no QP slot (max_peers {})", peer->rank, qps_.size());
    if (cfg_.rank >= peer->qpns.size())
      return invalid("verbs peer {} has no QP slot for our rank {}", peer->rank, cfg_.rank);
    // Connecting again to the very same peer (one process links to another as a gather root and
    // as a member, or as a writer and a target) keeps the connection: a reset would rewind the
    // expected PSN after the peer has written, and its next writes would meet a sequence error
    // on every retransmission: the link stalls (seen in the Soft-RoCE suite, where a gather
    // root's "open" reached a member between the member's two connects).
    const std::vector<uint8_t> key(blob.begin(), blob.end());
    if (linked_[peer->rank] == key) return static_cast<PeerId>(peer->rank);
    ibv_qp* q = qps_[peer->rank];
    linked_[peer->rank].clear();
    // Through RESET first: a restarted peer (new QP numbers) reuses its slot's QP, which is in
    // RTS or ERROR from the previous connection.
    ibv_qp_attr reset{};
    reset.qp_state = IBV_QPS_RESET;
    verbs::Transition init = verbs::to_init(addr_.port);
    if (ibv_modify_qp(q, &reset, IBV_QP_STATE) || ibv_modify_qp(q, &init.attr, init.mask))
      return Status(
          Code::kTransport,
          errno_str(fmt::format("ibv_modify_qp(RESET/INIT, peer {})", peer->rank).c_str()));
    const ibv_mtu mtu = static_cast<ibv_mtu>(std::min<uint8_t>(peer->mtu, addr_.mtu));
    verbs::Transition rtr =
        verbs::to_rtr(peer->qpns[cfg_.rank], 0, peer->lid, peer->gid, addr_.port, gid_index_, mtu);
    if (ibv_modify_qp(q, &rtr.attr, rtr.mask))
      return Status(Code::kTransport,
                    errno_str(fmt::format("ibv_modify_qp(RTR, peer {})", peer->rank).c_str()));
    verbs::Transition rts = verbs::to_rts(0);
    if (ibv_modify_qp(q, &rts.attr, rts.mask))
      return Status(Code::kTransport,
                    errno_str(fmt::format("ibv_modify_qp(RTS, peer {})", peer->rank).c_str()));
    linked_[peer->rank] = key;
    return static_cast<PeerId>(peer->rank);
  }

  Result<LocalMr> register_memory(void* base, uint64_t len, MemKind kind) override {
    const int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    ibv_mr* mr = nullptr;
    std::string how;
    if (kind == MemKind::kCuda) {
      const int fd = cuda_dmabuf_fd(base, len);
      if (fd >= 0) {
        mr = ibv_reg_dmabuf_mr(pd_, 0, len, reinterpret_cast<uint64_t>(base), fd,
                               access | IBV_ACCESS_RELAXED_ORDERING);
        ::close(fd);
        how = "dma-buf";
      }
    }
    if (!mr) mr = ibv_reg_mr(pd_, base, len, access | IBV_ACCESS_RELAXED_ORDERING);
    if (!mr) mr = ibv_reg_mr(pd_, base, len, access);  // libraries without relaxed ordering
    if (!mr)
      return Status(
          Code::kTransport,
          fmt::format("ibv_reg_mr(len={}{}): {}", len,
                      kind == MemKind::kCuda ? ", CUDA memory: no dma-buf and no peer memory" : "",
                      std::strerror(errno)));
    LocalMr out;
    out.id = next_id_++;
    out.base = base;
    out.len = len;
    out.desc = mr;
    out.remote = {reinterpret_cast<uint64_t>(base), mr->rkey, len};
    mrs_[out.id] = mr;
    return out;
  }

  Status deregister(const LocalMr& m) override {
    auto it = mrs_.find(m.id);
    if (it == mrs_.end()) return invalid("deregister: unknown region {}", m.id);
    ibv_dereg_mr(it->second);
    mrs_.erase(it);
    return Status::ok();
  }

  PostResult post(std::span<const WriteOp> ops) override {
    PostResult res;
    while (res.taken < ops.size()) {
      // One chain per run of consecutive ops to the same peer.
      size_t end = res.taken + 1;
      while (end < ops.size() && ops[end].peer == ops[res.taken].peer) ++end;
      for (size_t i = res.taken; i < end; ++i)  // overflow-safe, before any address is formed
        if (ops[i].in_place) {
          end = i;
          if (end == res.taken) {
            res.error =
                invalid("post: write {} is in place, which needs the ipc backend", ops[i].id);
            return res;
          }
          break;
        } else if (!within(ops[i].src_off, ops[i].len, ops[i].src->len) ||
                   !within(ops[i].dst_off, ops[i].len, ops[i].dst.len)) {
          end = i;
          if (end == res.taken) {
            res.error = invalid("post: write {} ({} bytes at src {} dst {}) runs past a region",
                                ops[i].id, ops[i].len, ops[i].src_off, ops[i].dst_off);
            return res;
          }
          break;
        }
      const auto run = ops.subspan(res.taken, end - res.taken);
      if (run[0].peer >= qps_.size()) {
        res.error = invalid("post: write {} names unknown peer {}", run[0].id, run[0].peer);
        return res;
      }
      std::vector<uint32_t> lkeys;
      for (const WriteOp& op : run) lkeys.push_back(static_cast<ibv_mr*>(op.src->desc)->lkey);
      verbs::build_chain(run, lkeys, chain_);
      ibv_send_wr* bad = nullptr;
      const int rc = ibv_post_send(qps_[run[0].peer], chain_.wrs.data(), &bad);
      if (rc == 0) {
        res.taken = end;
        continue;
      }
      // Work requests before `bad` were posted (ibv_post_send's contract).
      res.taken += bad ? static_cast<size_t>(bad - chain_.wrs.data()) : 0;
      if (rc != ENOMEM)  // a full send queue is back-pressure, not an error
        res.error = Status(Code::kTransport,
                           fmt::format("ibv_post_send(peer {}, write {}): {}", run[0].peer,
                                       ops[res.taken].id, std::strerror(rc)));
      return res;
    }
    return res;
  }

  Result<size_t> poll(std::span<Completion> out) override {
    ibv_wc wc[64];
    const int n = ibv_poll_cq(cq_, static_cast<int>(std::min<size_t>(out.size(), 64)), wc);
    if (n < 0) return Status(Code::kTransport, "ibv_poll_cq failed");
    for (int i = 0; i < n; ++i) {
      bool repost = false;
      out[static_cast<size_t>(i)] = verbs::decode(wc[i], repost);
      if (repost)
        if (Status s = post_recv(); !s) return s;
    }
    return static_cast<size_t>(n);
  }

 private:
  // The GID a RoCE v2 deployment routes by: the first IPv4-mapped (::ffff:a.b.c.d) entry of
  // type RoCE v2; InfiniBand and RoCE v1 ports fall back to index 0.
  int pick_gid(int table_len) {
    for (int i = 0; i < table_len; ++i) {
      ibv_gid_entry e{};
      if (ibv_query_gid_ex(ctx_, addr_.port, static_cast<uint32_t>(i), &e, 0)) continue;
      if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && verbs::is_ipv4_mapped(e.gid)) return i;
    }
    return 0;
  }

  Status post_recv() {
    ibv_recv_wr wr{};
    ibv_recv_wr* bad = nullptr;
    wr.wr_id = verbs::kRecvWrId;
    wr.num_sge = 0;  // WRITE_WITH_IMM consumes a receive but places no data in it
    if (int rc = ibv_post_srq_recv(srq_, &wr, &bad); rc != 0)
      return Status(Code::kTransport, fmt::format("ibv_post_srq_recv: {}", std::strerror(rc)));
    return Status::ok();
  }

  DomainConfig cfg_;
  int gid_index_ = 0;
  Capabilities caps_;
  verbs::Address addr_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_cq* cq_ = nullptr;
  ibv_srq* srq_ = nullptr;
  std::vector<ibv_qp*> qps_;
  std::vector<std::vector<uint8_t>> linked_;  // per slot: the address its QP is connected to
  std::map<uint32_t, ibv_mr*> mrs_;
  uint32_t next_id_ = 1;
  verbs::Chain chain_;
};

}  // namespace

Result<std::unique_ptr<Domain>> open_verbs_domain(const DomainConfig& cfg) {
  auto d = std::make_unique<VerbsDomain>();
  if (Status s = d->open(cfg); !s) return s;
  return std::unique_ptr<Domain>(std::move(d));
}

}  // namespace weightcast::transport
