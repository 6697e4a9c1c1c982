// The trainer-side executor (one per trainer rank) and the inference-side receiver (one per
// inference rank), on host memory over the transport. Prepare once (register, exchange
// descriptors through the rendezvous, warm connections up), then push / wait every step.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "weightcast/exec/binding.h"
#include "weightcast/exec/collective.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/step_trace.h"
#include "weightcast/transport/progress.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::exec {

using Clock = std::chrono::steady_clock;

struct StepReport {
  uint64_t step = 0, bytes = 0, writes = 0, projects = 0;
  double project_s = 0, write_s = 0, total_s = 0;  // write_s: time not hidden behind projection
  double post_s = 0;  // CPU time the progress thread spent posting this step's writes
  double gather_s = 0;
  double ring_wait_s = 0;           // projections waiting for writes to free their staging slot
  double mirror_s = 0;              // kCuda: shards copied to their host mirror
  double ready_s = 0;               // blocked on `ready` before the first write could go out
  uint64_t in_place = 0;            // projections written straight into receivers' GPU tensors
  std::vector<double> nic_gbps;     // bytes this step posted on each NIC over the step's time
  std::vector<uint64_t> nic_bytes;  // bytes this step posted on each NIC
  uint64_t staging_peak = 0;        // most staging bytes its writes read at once
  uint32_t rejoined = 0;            // receivers reconnected to (they restarted) this step
};

// What a receiver armed for one attempt: the generation its writes must carry, and the
// incarnation of the process that armed it (a restarted receiver has new buffers).
struct Armed {
  uint8_t generation = 0;
  uint32_t incarnation = 0;
};
// Blocks until the receivers may be written, and says what each armed (receivers missing from
// the map use the push's generation and the incarnation in use).
using ReadyFn = std::function<Result<std::map<uint32_t, Armed>>()>;

// The mirror stage (kCuda shards on a libfabric without FI_HMEM): every step queues the copies of
// all host-read shards to their registered host mirror at once, in the order the step first
// reads them, on a stream of their own; each read waits for its own copy only.
class ShardMirror {
 public:
  struct Copy {
    void* host;
    const void* device;
    uint64_t bytes;
    std::string name;
  };
  using Lookup = std::function<Result<Copy>(int param)>;
  // `order`: the host-read shards in the order a step first reads them.
  Status init(int device, std::vector<int> order, std::set<int> host_read, Lookup lookup);
  // Queues every shard for which `bound` holds (a no-op without init).
  Status start_step(uint8_t step, const std::function<bool(int)>& bound);
  // Waits until this step's copy of `param` is on the host (a no-op for other shards, and once
  // done).
  Status wait(int param);
  bool done(int param) const;
  double seconds() const { return seconds_; }

 private:
  Status queue(int param);
  bool enabled_ = false;
  CopyQueue queue_;
  std::vector<int> order_;
  std::map<int, size_t> slot_;
  std::set<int> host_read_, queued_, done_;
  Lookup lookup_;
  uint8_t step_ = 0;
  double seconds_ = 0;
};

class TrainerExecutor {
 public:
  ~TrainerExecutor();
  // With `allocate`, the executor owns one arena holding every shard of the rank; without, the
  // caller binds its own tensors (bind_shard) before prepare(). `shards` says where shards live:
  // kCuda runs projections on the GPU (exec/project_cuda.h) from the device shards, on CUDA
  // device `cuda_device`. Where the transport writes GPU memory (ipc; FI_HMEM; dma-buf) direct
  // writes and projection outputs go out from the GPU. Elsewhere every step first copies the
  // shards that are read on the host (by direct writes and gather pieces) to a registered,
  // page-locked host mirror, and staged results come back to page-locked host staging before
  // they are written. Gather pieces always go through the host mirror.
  static Result<std::unique_ptr<TrainerExecutor>> create(
      const spec::Inputs& in, const plan::Plan& plan, uint32_t rank,
      const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
      bool allocate = true, MemoryKind shards = MemoryKind::kHost, int cuda_device = 0,
      bool nccl_gathers = false);
  // (`nccl_gathers`: gathers run on NCCL between the GPU shards, exec/nccl_collective.h; needs
  // kCuda shards. Else on the host collective.)
  // Registers the caller's memory (device memory when shards are kCuda) as this rank's shard of
  // trainer param `name` (row-major over the rank's local box, trainer dtype); `bytes` must be
  // exactly the shard's size.
  Status bind_shard(const std::string& name, void* data, uint64_t bytes);
  // The rank's shard of a trainer param (nullptr if not held here or not bound yet); a device
  // pointer when shards are kCuda.
  std::byte* shard(int param);
  MemoryKind shard_memory() const { return shard_kind_; }
  const SenderLayout& layout() const { return layout_; }
  // Publishes this rank's address and gather buffer. prepare() does it too; call it early when
  // one thread prepares several ranks that gather from each other.
  Status publish();
  // Publishes, connects to every receiver it writes to (and the gather roots it sends to),
  // fetches their descriptors and warms each connection up with a zero-length write. A restarted
  // trainer passes its peers' current incarnations (per receiver, per trainer rank; missing
  // entries are 0), so it never links to, or warms up, a peer's dead earlier incarnation.
  Status prepare(Clock::time_point deadline, std::span<const uint32_t> receiver_incarnations = {},
                 std::span<const uint32_t> trainer_incarnations = {});
  // Runs the rank's tasks for one attempt of a step: projections into the staging ring (a slot
  // is reused only after the writes reading it completed), writes tagged {generation, phase,
  // rank}. Each receiver's writes carry the generation it armed for this attempt (`ready`), so
  // writes of an aborted attempt never count toward another; gathers use `generation`.
  // `ready` (optional) blocks until the receivers may be written (their engines no longer read
  // the weights); it runs on a thread of its own while gathers and projections start, and the
  // first write waits for it. A receiver that armed under a new incarnation is reconnected to
  // first. `max_writes` stops early (fault-injection tests).
  // A failed push drains every write it posted before it returns, and tells each receiver whose
  // generation it knew that it aborted (their wait fails at once, naming this rank). If the
  // drain cannot finish by the deadline the executor is fenced: the next push drains first and
  // refuses to project or write until nothing of the failed attempt is in flight.
  Result<StepReport> push(uint8_t generation, Clock::time_point deadline,
                          uint64_t max_writes = UINT64_MAX, const ReadyFn& ready = {});
  // The incarnation this rank is linked to for `receiver` (its descriptors in use).
  uint32_t receiver_incarnation(uint32_t receiver) const;
  // A receiver restarted (new incarnation, new buffers): reconnect to it and use its new
  // descriptors from the next push on. No-op when the incarnation is the one in use.
  Status rejoin(uint32_t receiver, uint32_t incarnation, Clock::time_point deadline);
  // The same for a restarted trainer this rank sends gather pieces to.
  Status rejoin_trainer(uint32_t rank, uint32_t incarnation, Clock::time_point deadline) {
    return collective_->rejoin(rank, incarnation, deadline);
  }
  // Spans of every push go to `trace` (not owned; null: off).
  void set_trace(StepTrace* trace) { trace_ = trace; }
  // A restarted trainer publishes under a new incarnation (call before prepare).
  void set_incarnation(uint32_t k) {
    incarnation_ = k;
    collective_->set_incarnation(k);
  }

 private:
  Status connect_receiver(uint32_t receiver, uint32_t incarnation, Clock::time_point deadline);
  // One attempt of push, its pipeline stages owned by small classes of their own (attempt.cpp):
  // readiness, writes, the projection queue; the mirror stage is mirror_, gathers collective_.
  class Attempt;
  class Readiness;
  class WriteStage;
  class ProjectionQueue;
  Result<StepReport> run_attempt(uint8_t generation, Clock::time_point deadline,
                                 uint64_t max_writes, const ReadyFn& ready);
  // After a failed attempt: drain, then the abort immediates; fenced_ when the drain is not done.
  Status abort_attempt(Clock::time_point deadline);
  // A write built during the attempt, bound to its receiver's connection, descriptor and
  // generation only when it is submitted (after readiness: a receiver may have restarted).
  struct PendingWrite {
    transport::GroupWrite g;
    uint32_t receiver, dest;
    uint8_t phase;
  };
  std::map<uint32_t, Armed> armed_;  // this attempt's generation per receiver, once known
  bool fenced_ = false;              // writes of a failed attempt may still be in flight
  std::map<uint64_t, std::set<uint32_t>> batch_receivers_;  // this attempt's batches -> receivers
  TrainerExecutor(const spec::Inputs& in, const plan::Plan& plan) : in_(in), plan_(plan) {}
  struct Bound {  // where a shard lives: a registered region and the shard's offset in it
    std::byte* data = nullptr;
    const transport::Region* region = nullptr;
    uint64_t offset = 0;
  };
  // A span from t0 to now on the trace, if one is on.
  void span(const char* what, StepTrace::Lane lane, Clock::time_point t0, uint64_t gen) {
    if (trace_) trace_->span(what, lane, t0, Clock::now(), gen);
  }
  const spec::Inputs& in_;
  const plan::Plan& plan_;
  uint32_t rank_ = 0;
  StepTrace* trace_ = nullptr;
  SenderLayout layout_;
  unsigned debug_project_delay_ms_ = 0;
  // kCuda shards: their device pointers, the device arena (when allocated here), the device
  // staging the GPU projects into, the device copy of the gather buffer, assembly scratch. The
  // host arena_ is then the registered mirror of the shards.
  MemoryKind shard_kind_ = MemoryKind::kHost;
  int cuda_device_ = 0;
  std::map<int, std::byte*> device_shard_;
  // kCuda shards on a transport that writes GPU memory: direct writes read the device shards
  // (wire_), projections are written from device_staging_, and nothing but gather pieces is
  // mirrored to the host.
  bool wire_gpu_ = false;
  std::map<int, Bound> wire_;
  std::set<int> host_read_;  // shards read on the host (mirrored each step in kCuda mode)
  ShardMirror mirror_;
  // kCuda: one mark per batch of projections queued on the GPU whose writes have not gone out
  // yet.
  static constexpr unsigned kMarks = 4;
  // A batch of GPU projections: at most this many, and this many elements (4 bytes each of
  // scratch) together; a larger projection runs alone.
  static constexpr size_t kBatchProjects = 16;
  static constexpr int64_t kBatchElems = 4 << 20;
  CopyQueue proj_marks_;
  Buffer device_arena_, device_staging_, device_gbuf_, scratch_;
  Buffer arena_, staging_;  // shards (when the executor allocates them) and the staging areas
  transport::ImmCounters counters_;
  std::unique_ptr<transport::ProgressEngine> engine_;
  transport::Region arena_region_, staging_region_;
  std::deque<transport::Region> user_regions_;
  std::map<int, Bound> bound_;
  std::unique_ptr<Collective> collective_;
  uint32_t incarnation_ = 0;
  uint32_t rejoined_ = 0;  // receivers reconnected to since this executor started
  transport::RendezvousClient* rdv_ = nullptr;
  struct Target {
    uint32_t peer;
    std::map<uint32_t, transport::RemoteRegion> tensors;  // dest id -> its descriptor
    uint32_t incarnation = 0;
  };
  std::map<uint32_t, Target> receivers_;

 public:
  // Projections written straight into the receivers' GPU tensors (in_place_): GPU shards on a
  // backend that maps its peers' GPU memory (ipc). A projection qualifies when its writes map
  // its staging range linearly onto one dest tensor (and its scales onto another): then its
  // output lands at out_base of that tensor, its scales at scale_base, and its writes only carry
  // the immediates. -1: it goes through staging. Indexed by project id.
  struct InPlace {
    int64_t out_base = -1, scale_base = -1;
  };
  static std::vector<InPlace> in_place_for_tests(const plan::Plan& plan, uint32_t rank);

 private:
  std::vector<InPlace> in_place_;
  // A receiver's dest tensor as mapped here (a kernel's destination), per incarnation in use.
  struct Window {
    uint32_t incarnation = 0;
    std::byte* base = nullptr;
    Status why;  // when base is null
  };
  std::map<std::pair<uint32_t, uint32_t>, Window> windows_;
  // Where dest tensor `dest` of `receiver` is mapped in this process, or why it is not.
  Result<std::byte*> window(uint32_t receiver, uint32_t dest);
};

struct WaitReport {
  uint64_t step = 0, bytes = 0, imms = 0;
  double wait_s = 0;
  // Staged tensors: bytes copied from the landing area into the tensors, and how long the copy
  // took after the last sender's immediates arrived (the part not hidden behind the transfer).
  uint64_t staged_bytes = 0;
  double staging_s = 0;
};

// How a receiver's tensors take the NIC's writes.
//   kAuto: registered directly where the transport can write that memory (host memory; GPU
//          memory over verbs with dma-buf or peer memory, libfabric with FI_HMEM), else staged.
//   kAlways: every tensor is staged: writes land in a registered (pinned) host area and are
//          copied into the tensors per sender as that sender's immediates complete (the copy of
//          one sender's bytes overlaps the others' transfer), all before wait() returns.
//   Staged on the hybrid backend, a tensor is split (Domain::register_split): the senders of
//   this host write it directly over ipc (GPU to GPU), only the others' bytes are staged.
//   kNever: direct registration or an error naming the tensor.
enum class Staging : uint8_t { kAuto, kAlways, kNever };

class InferenceReceiver {
 public:
  ~InferenceReceiver();
  // With `allocate`, the receiver owns one arena holding all its tensors; without, the caller
  // binds the engine's own weight tensors (bind_tensor) before publish().
  static Result<std::unique_ptr<InferenceReceiver>> create(
      const spec::Inputs& in, const plan::Plan& plan, uint32_t receiver,
      const std::vector<transport::DomainConfig>& nics, transport::RendezvousClient* rdv,
      bool allocate = true);
  // Registers the caller's buffer for inference param `name` on this rank (its FP32 block scales
  // when `scales`); `bytes` must be exactly the local tensor's size.
  Status bind_tensor(const std::string& name, bool scales, void* data, uint64_t bytes);
  // Set before bind_tensor: the staging policy, and the CUDA device GPU tensors live on.
  void set_staging(Staging s, int cuda_device) {
    staging_ = s;
    device_ = cuda_device;
  }
  // "host", "gpu" (registered GPU memory), "staged" or a mix ("gpu+staged"), once bound.
  std::string memory_mode() const;
  std::byte* tensor(uint32_t dest);
  // Publishes the address and one descriptor per tensor (all must be bound). A restarted receiver
  // sets its incarnation first, so senders can tell its new descriptors from the old ones.
  Status publish();
  void set_incarnation(uint32_t k) { incarnation_ = k; }
  // Whether connect_senders() has work to do (verbs RC; split tensors of the hybrid backend).
  bool watches_senders() const { return both_ends_ || split_; }
  // Arrivals of older generations dropped so far (writes of aborted attempts landing late).
  uint64_t stale() const { return counters_.stale(); }
  // Arms the barrier for an attempt: writes of older generations are ignored from here on.
  void begin(uint8_t generation);
  // Transports whose targets connect too (verbs RC): connects to every trainer that writes here,
  // at the given trainer incarnations (a restarted trainer has new queue pairs). With split
  // tensors: learns which trainers write them directly (a restarted trainer may run elsewhere).
  // Call after publish() and whenever a trainer restarts, before the step's writes; a no-op
  // elsewhere.
  Status connect_senders(std::span<const uint32_t> trainer_incarnations,
                         Clock::time_point deadline);
  // Waits until every expected immediate of the generation arrived; on deadline fails naming
  // each sender that is short. Never returns ok on a partial update.
  Result<WaitReport> wait(uint8_t generation, Clock::time_point deadline);

 private:
  explicit InferenceReceiver(const plan::Plan& plan) : plan_(plan) {}
  const plan::Plan& plan_;
  uint32_t receiver_ = 0;
  ReceiverLayout layout_;
  Buffer arena_;  // the tensors, when the receiver allocates them
  transport::ImmCounters counters_;
  std::unique_ptr<transport::ProgressEngine> engine_;
  std::deque<transport::Region> regions_;
  std::map<uint32_t, std::pair<std::byte*, const transport::Region*>>
      bound_;                               // dest -> (data, region)
  std::map<uint32_t, uint64_t> bound_off_;  // dest -> offset inside its region
  transport::RendezvousClient* rdv_ = nullptr;
  std::vector<transport::Expect> expect_;
  std::map<uint32_t, int64_t> senders_;  // trainer -> incarnation connected (-1: not yet)
  std::map<uint32_t, bool> direct_;      // trainer -> writes split tensors directly
  bool both_ends_ = false, split_ = false;
  uint64_t bytes_ = 0;
  uint32_t incarnation_ = 0;
  // Staged tensors: the landing area the NIC writes, the tensor it is copied into, and per
  // sender (a group of expect_) the byte ranges that sender writes, copied once it completes.
  struct Staged {
    std::byte* target = nullptr;
    Buffer landing;
    bool cuda = false;
    bool split = false;  // direct writers write `target`, the others `landing`
  };
  struct CopyRange {
    uint32_t dest;
    uint64_t off, len;
  };
  Staging staging_ = Staging::kAuto;
  int device_ = -1;
  std::map<uint32_t, Staged> staged_;  // dest -> its staging
  bool direct_gpu_ = false, direct_host_ = false;
  std::vector<std::vector<transport::Expect>> groups_;
  std::vector<std::vector<CopyRange>> copies_;  // per group
  CopyQueue copy_queue_;
  bool copy_queue_created_ = false;
  Status stage_tensor(uint32_t d, void* data, uint64_t bytes, bool cuda);
  void plan_copies();
  Status copy_group(size_t g);
};

}  // namespace weightcast::exec
