// The NCCL collective (nccl_collective.h): libnccl.so.2 loaded at run time, one communicator per
// gather group, a phase's sends and receives as one NCCL group on the collective's stream.
#include "weightcast/exec/nccl_collective.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "weightcast/session/keys.h"

#if defined(WEIGHTCAST_HAVE_CUDA) && __has_include(<nccl.h>)
#define WEIGHTCAST_NCCL 1
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#endif

namespace weightcast::exec {

#ifndef WEIGHTCAST_NCCL

bool nccl_available(std::string* why) {
  if (why) *why = "this build has no CUDA (or no nccl.h)";
  return false;
}

Result<std::unique_ptr<Collective>> create_nccl_collective(const spec::Inputs&, const plan::Plan&,
                                                           uint32_t, transport::RendezvousClient*,
                                                           ShardLookup, int) {
  std::string why;
  nccl_available(&why);
  return invalid("NCCL gathers: {}", why);
}

#else

namespace {

// The functions used, from libnccl.so.2 (no link-time dependency: binaries run without NCCL).
struct Nccl {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRankConfig) init = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
  decltype(&ncclCommGetAsyncError) async_error = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  std::string why;  // empty when loaded
};

const Nccl& nccl() {
  static const Nccl n = [] {
    Nccl r;
    const char* path = std::getenv("WEIGHTCAST_NCCL");  // a path, else the loader's search
    void* h = dlopen(path && *path ? path : "libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      r.why = fmt::format("cannot load {} ({}; WEIGHTCAST_NCCL names the library)",
                          path && *path ? path : "libnccl.so.2", e ? e : "?");
      return r;
    }
    auto sym = [&](auto& f, const char* name) {
      f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(h, name));
      if (!f && r.why.empty()) r.why = fmt::format("libnccl.so.2 has no {}", name);
    };
    sym(r.get_unique_id, "ncclGetUniqueId");
    sym(r.init, "ncclCommInitRankConfig");
    sym(r.abort, "ncclCommAbort");
    sym(r.async_error, "ncclCommGetAsyncError");
    sym(r.send, "ncclSend");
    sym(r.recv, "ncclRecv");
    sym(r.group_start, "ncclGroupStart");
    sym(r.group_end, "ncclGroupEnd");
    sym(r.error_string, "ncclGetErrorString");
    return r;
  }();
  return n;
}

Status nccl_err(const char* what, ncclResult_t r) {
  return Status(Code::kRemote, fmt::format("{}: {}", what, nccl().error_string(r)));
}
Status cuda_fail(const char* what, cudaError_t e) {
  return Status(Code::kInternal, fmt::format("{}: {}", what, cudaGetErrorString(e)));
}

std::string hex(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}

class NcclCollective final : public Collective {
 public:
  NcclCollective(const spec::Inputs& in, const plan::Plan& plan) : in_(in), plan_(plan) {}
  ~NcclCollective() override {
    if (comm_) nccl().abort(comm_);
    for (cudaEvent_t e : done_)
      if (e) cudaEventDestroy(e);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init(uint32_t rank, transport::RendezvousClient* rdv, ShardLookup shards, int device) {
    rank_ = rank;
    rdv_ = rdv;
    shards_ = std::move(shards);
    device_ = device;
    group_ = gather_group(in_, rank);
    for (const plan::Gather& g : plan_.gathers) {
      bool mine = g.root == rank;
      for (const auto& p : g.pieces) mine = mine || p.rank == rank;
      for (const auto& p : g.pieces)
        if (mine && !std::binary_search(group_.begin(), group_.end(), p.rank))
          return invalid(
              "NCCL gathers stay inside an NVLink domain, but a gather of '{}' to "
              "trainer rank {} has a piece from rank {} of another domain (plan with "
              "--intra-node-gathers-only, or use JobConfig.gathers host)",
              in_.trainer.params[g.param].name, g.root, p.rank);
    }
    transfers_ = phase_transfers(in_, plan_, rank);
    auto [off, gbytes] = gather_offsets(in_, plan_, rank);
    offset_ = std::move(off);
    uint64_t send = 1, recv = 1;
    for (const PhaseTransfers& t : transfers_) {
      send = std::max(send, t.send_bytes);
      recv = std::max(recv, t.recv_bytes);
    }
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
      return cuda_fail("cudaSetDevice", e);
    for (auto [buf, bytes] : {std::pair{&gbuf_, std::max<uint64_t>(gbytes, 1)},
                              std::pair{&pack_[0], send}, std::pair{&pack_[1], send},
                              std::pair{&scratch_[0], recv}, std::pair{&scratch_[1], recv}}) {
      auto b = Buffer::allocate(MemoryKind::kCuda, bytes, device);
      if (!b) return b.status();
      *buf = std::move(b).value();
    }
    if (cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
        e != cudaSuccess)
      return cuda_fail("cudaStreamCreateWithFlags", e);
    for (cudaEvent_t* e : {&done_[0], &done_[1], &ready_})
      if (cudaError_t r = cudaEventCreateWithFlags(e, cudaEventDisableTiming); r != cudaSuccess)
        return cuda_fail("cudaEventCreate", r);
    return Status::ok();
  }

  Status publish() override { return Status::ok(); }  // the group's id goes out in prepare()

  Status prepare(Clock::time_point deadline, std::span<const uint32_t> incarnations) override {
    incarnations_.assign(incarnations.begin(), incarnations.end());
    return connect(deadline);
  }

  Status open(uint8_t, Clock::time_point deadline) override {
    return broken_ ? connect(deadline) : Status::ok();
  }

  Status run(uint8_t, uint16_t phase, std::span<const uint32_t> gathers,
             Clock::time_point deadline) override {
    if (phase >= transfers_.size())
      return invalid("gather phase {} is not in the plan ({} phases)", phase, transfers_.size());
    for (uint32_t gi : gathers)
      if (gi >= plan_.gathers.size() || plan_.gathers[gi].phase != phase)
        return invalid("gather {} is not in phase {}", gi, phase);
    const PhaseTransfers& t = transfers_[phase];
    auto named = [&](const Status& s) {
      return Status(s.code(), fmt::format("NCCL gathers of phase {} at trainer rank {}: {}", phase,
                                          rank_, s.message()));
    };
    if (Status s = cuda_use_device(device_); !s) return named(s);
    const CopyFn d2d = [](std::byte* dst, const std::byte* src, uint64_t n) {
      return copy_device_to_device_async(dst, src, n);
    };
    // Own pieces into place, on this thread's stream (before the projections that read them).
    for (const PieceTransfer& x : t.local)
      if (Status s = place(x, d2d); !s) return named(s);
    if (t.sends.empty() && t.recvs.empty()) return Status::ok();
    if (broken_ || !comm_) return named(invalid("no communicator (an earlier gather failed)"));
    const int slot = static_cast<int>(runs_++ % 2);
    const cudaStream_t main = cudaStreamPerThread;
    // This slot's packing and receive areas are free once its previous NCCL group is done.
    if (cudaError_t e = cudaStreamWaitEvent(main, done_[slot], 0); e != cudaSuccess)
      return named(cuda_fail("cudaStreamWaitEvent", e));
    for (const PieceTransfer& x : t.sends) {
      const plan::Gather& g = plan_.gathers[x.gather];
      auto held = shards_(g.param);
      if (!held) return named(held.status());
      const core::Box& piece = g.pieces[x.piece].box;
      if (!held->second || !held->first.contains(piece))
        return named(invalid("trainer rank {} does not hold its piece {} of '{}'", rank_,
                             piece.str(), in_.trainer.params[g.param].name));
      if (Status s = copy_piece(piece, held->first, held->second, piece, pack_[slot].data() + x.off,
                                esize(g), d2d);
          !s)
        return named(s);
    }
    if (cudaError_t e = cudaEventRecord(ready_, main); e != cudaSuccess)
      return named(cuda_fail("cudaEventRecord", e));
    if (cudaError_t e = cudaStreamWaitEvent(stream_, ready_, 0); e != cudaSuccess)
      return named(cuda_fail("cudaStreamWaitEvent", e));
    const Nccl& n = nccl();
    ncclResult_t r = n.group_start();
    for (const PieceTransfer& x : t.sends)
      if (r == ncclSuccess)
        r = n.send(pack_[slot].data() + x.off, x.bytes, ncclUint8, nccl_rank(x.peer), comm_,
                   stream_);
    for (const PieceTransfer& x : t.recvs)
      if (r == ncclSuccess)
        r = n.recv(scratch_[slot].data() + x.off, x.bytes, ncclUint8, nccl_rank(x.peer), comm_,
                   stream_);
    const ncclResult_t end = n.group_end();
    if (r == ncclSuccess) r = end;
    if (r == ncclInProgress) r = settle(deadline);
    if (r != ncclSuccess) return named(fail(nccl_err("issuing the phase's sends and receives", r)));
    if (cudaError_t e = cudaEventRecord(done_[slot], stream_); e != cudaSuccess)
      return named(cuda_fail("cudaEventRecord", e));
    if (t.recvs.empty()) {  // a member: finish() waits for its sends
      pending_.push_back({done_[slot], phase});
      return Status::ok();
    }
    // A root waits for its pieces (a member that died never sends; NCCL would wait forever), then
    // unpacks them on this thread's stream.
    if (Status s = wait_event(done_[slot], deadline); !s) {
      std::string from;
      for (const PieceTransfer& x : t.recvs)
        if (from.find(fmt::format(" {},", x.peer)) == std::string::npos)
          from += fmt::format(" {},", x.peer);
      from.pop_back();
      return named(fail(Status(s.code(), fmt::format("pieces from trainer(s){} did not arrive: {}",
                                                     from, s.message()))));
    }
    if (cudaError_t e = cudaStreamWaitEvent(main, done_[slot], 0); e != cudaSuccess)
      return named(cuda_fail("cudaStreamWaitEvent", e));
    for (const PieceTransfer& x : t.recvs) {
      const plan::Gather& g = plan_.gathers[x.gather];
      const core::Box& piece = g.pieces[x.piece].box;
      if (Status s = copy_piece(piece, piece, scratch_[slot].data() + x.off, g.box,
                                gbuf_.data() + offset_[x.gather], esize(g), d2d);
          !s)
        return named(s);
    }
    return Status::ok();
  }

  Status pump(uint8_t, Clock::time_point) override { return Status::ok(); }  // sent in run()

  Status finish(Clock::time_point deadline) override {
    Status first;
    for (const auto& [ev, phase] : pending_)
      if (Status s = wait_event(ev, deadline); !s && first.is_ok())
        first = fail(Status(s.code(), fmt::format("NCCL gather member {}: phase {}'s pieces were "
                                                  "not received: {}",
                                                  rank_, phase, s.message())));
    pending_.clear();
    return first;
  }

  const std::byte* gathered(uint32_t gather) const override {
    if (gather >= plan_.gathers.size() || plan_.gathers[gather].root != rank_) return nullptr;
    return gbuf_.data() + offset_[gather];
  }

  Status rejoin(uint32_t trainer, uint32_t incarnation, Clock::time_point deadline) override {
    if (!std::binary_search(group_.begin(), group_.end(), trainer)) return Status::ok();
    if (incarnations_.size() <= trainer) incarnations_.resize(trainer + 1, 0);
    if (incarnations_[trainer] == incarnation && !broken_) return Status::ok();
    incarnations_[trainer] = incarnation;
    return connect(deadline);
  }

  const Buffer& buffer() const override { return gbuf_; }
  bool on_device() const override { return true; }
  Status pin_buffer() override { return Status::ok(); }
  void set_incarnation(uint32_t k) override { incarnation_ = k; }
  void set_sources(SourceLookup) override {}  // pieces are packed from the device shards

 private:
  size_t esize(const plan::Gather& g) const {
    return core::dtype_size(in_.trainer.params[g.param].dtype);
  }
  int nccl_rank(uint32_t trainer) const {
    return static_cast<int>(std::lower_bound(group_.begin(), group_.end(), trainer) -
                            group_.begin());
  }

  Status place(const PieceTransfer& x, const CopyFn& copy) {
    const plan::Gather& g = plan_.gathers[x.gather];
    auto held = shards_(g.param);
    if (!held) return held.status();
    const core::Box& piece = g.pieces[x.piece].box;
    if (!held->second || !held->first.contains(piece))
      return invalid("trainer rank {} does not hold its piece {} of '{}'", rank_, piece.str(),
                     in_.trainer.params[g.param].name);
    return copy_piece(piece, held->first, held->second, g.box, gbuf_.data() + offset_[x.gather],
                      esize(g), copy);
  }

  // The communicator of this rank's group at the group's current incarnations (and count of
  // failures: a failed gather aborts it, and every rank of the group starts a new one).
  Status connect(Clock::time_point deadline) {
    if (group_.size() < 2) return Status::ok();
    std::string epoch;
    for (uint32_t r : group_)  // (this rank's own entry of the peers' list is not its own)
      epoch += fmt::format("{}.", r == rank_                 ? incarnation_
                                  : r < incarnations_.size() ? incarnations_[r]
                                                             : 0u);
    epoch += fmt::format("f{}", failures_);
    if (comm_ && !broken_ && epoch == epoch_) return Status::ok();
    if (comm_) nccl().abort(comm_);
    comm_ = nullptr;
    const std::string key = session::keys::nccl_id(group_.front(), epoch);
    const std::string who = fmt::format("NCCL gather group of trainer ranks {}..{} ({} ranks)",
                                        group_.front(), group_.back(), group_.size());
    ncclUniqueId id;
    if (rank_ == group_.front()) {
      if (ncclResult_t r = nccl().get_unique_id(&id); r != ncclSuccess)
        return nccl_err("ncclGetUniqueId", r);
      if (Status s =
              rdv_->put(key, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(id.internal),
                                                      sizeof(id.internal)));
          !s)
        return s;
    } else {
      auto v = rdv_->get(key, deadline);
      if (!v)
        return Status(v.status().code(), fmt::format("{}: trainer rank {} published no NCCL id "
                                                     "for this incarnation: {}",
                                                     who, group_.front(), v.status().message()));
      if (v->size() != sizeof(id.internal))
        return invalid("{}: the NCCL id is {} bytes ({}...), not {}", who, v->size(),
                       hex(v->data(), std::min<size_t>(v->size(), 8)), sizeof(id.internal));
      std::copy(v->begin(), v->end(), reinterpret_cast<uint8_t*>(id.internal));
    }
    if (Status s = cuda_use_device(device_); !s) return s;
    // Point-to-point sends never use NVLink multicast (NVLS); keep it off unless the job says
    // otherwise (on shared machines a program using it can take the host's GPUs out of service).
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;  // so that a missing rank times out at the deadline instead of hanging
    ncclResult_t r =
        nccl().init(&comm_, static_cast<int>(group_.size()), id, nccl_rank(rank_), &cfg);
    if (r == ncclSuccess || r == ncclInProgress) r = settle(deadline);
    if (r != ncclSuccess) {
      if (comm_) nccl().abort(comm_);
      comm_ = nullptr;
      return Status(Code::kTimeout,
                    fmt::format("{}: creating the communicator: {}", who, nccl().error_string(r)));
    }
    epoch_ = epoch;
    broken_ = false;
    return Status::ok();
  }

  // Polls the non-blocking communicator until its last call completed (or the deadline).
  ncclResult_t settle(Clock::time_point deadline) {
    ncclResult_t state = ncclInProgress;
    while (comm_) {
      if (nccl().async_error(comm_, &state) != ncclSuccess || state != ncclInProgress) break;
      if (Clock::now() >= deadline) return ncclInProgress;
      std::this_thread::yield();
    }
    return state;
  }

  Status wait_event(cudaEvent_t e, Clock::time_point deadline) {
    for (;;) {
      const cudaError_t q = cudaEventQuery(e);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) return cuda_fail("the gather's NCCL stream", q);
      ncclResult_t state = ncclSuccess;
      if (comm_ && nccl().async_error(comm_, &state) == ncclSuccess && state != ncclSuccess &&
          state != ncclInProgress)
        return nccl_err("NCCL", state);
      if (Clock::now() >= deadline)
        return Status(Code::kTimeout, "deadline passed with NCCL transfers in flight");
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return Status::ok();
  }

  // A failed gather: the communicator is aborted (which ends its kernels) and replaced at the next
  // open() or prepare(), under a new epoch that every rank of the group reaches the same way.
  Status fail(Status s) {
    if (comm_) nccl().abort(comm_);
    comm_ = nullptr;
    broken_ = true;
    ++failures_;
    return s;
  }

  const spec::Inputs& in_;
  const plan::Plan& plan_;
  uint32_t rank_ = 0, incarnation_ = 0;
  int device_ = 0;
  transport::RendezvousClient* rdv_ = nullptr;
  ShardLookup shards_;
  std::vector<uint32_t> group_, incarnations_;
  std::vector<PhaseTransfers> transfers_;
  std::vector<uint64_t> offset_;
  Buffer gbuf_, pack_[2], scratch_[2];
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_[2] = {nullptr, nullptr}, ready_ = nullptr;
  std::vector<std::pair<cudaEvent_t, uint16_t>> pending_;
  ncclComm_t comm_ = nullptr;
  std::string epoch_;
  bool broken_ = false;
  uint32_t failures_ = 0;
  uint64_t runs_ = 0;
};

}  // namespace

bool nccl_available(std::string* why) {
  const Nccl& n = nccl();
  if (why) *why = n.why;
  return n.why.empty();
}

Result<std::unique_ptr<Collective>> create_nccl_collective(const spec::Inputs& in,
                                                           const plan::Plan& plan, uint32_t rank,
                                                           transport::RendezvousClient* rdv,
                                                           ShardLookup shards, int device) {
  if (std::string why; !nccl_available(&why)) return invalid("NCCL gathers: {}", why);
  auto c = std::make_unique<NcclCollective>(in, plan);
  if (Status s = c->init(rank, rdv, std::move(shards), device); !s)
    return Status(s.code(), fmt::format("NCCL gathers: {}", s.message()));
  return std::unique_ptr<Collective>(std::move(c));
}

#endif

}  // namespace weightcast::exec
