// weightcast's public C++ API. Embed it in a trainer loop (Sender, one per trainer rank) and in
// an inference engine (Receiver, one per inference rank); one Controller per job runs the
// rendezvous and fixes the plan. No exceptions cross this API: every call returns Status or
// Result<T>. docs/transport.md says which memory each backend writes.
// Failures, retries and restarted peers: docs/failures.md.
//
//   Controller c = *Controller::start(job);            // once per job; job.rendezvous is filled in
//   Receiver r = *Receiver::create(job, index);         // on each inference rank
//   r.register_tensor("model.layers.0.mlp.experts.0.gate_up_proj.weight", ptr, bytes);
//   r.publish();
//   Sender s = *Sender::create(job, rank);              // on each trainer rank
//   s.register_tensor("model.layers.0.mlp.experts.0.gate_proj.weight", shard_ptr, bytes);
//   s.prepare();
//   every step:  s.push(step)   ||   r.wait(step)      // r.wait returns once every byte landed
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::api {

struct JobConfig {
  std::string trainer_spec, inference_spec, topology;  // JSON files (docs/spec-format.md)
  std::string rendezvous;                              // host:port; Controller::start fills it
  std::string token;             // the job token, or (better) this peer's Controller::peer_token
  std::string provider = "tcp";  // libfabric provider (efa in production)
  // "fabric" (libfabric `provider`; nics are local IP addresses), "verbs" (ibverbs RC; nics
  // are RDMA device names such as mlx5_0), or "ipc" (every peer on this host: GPU memory through
  // CUDA IPC, host memory through process_vm_writev; nics then only counts the links, one
  // domain each, and every peer needs the same count), or "hybrid" ("hybrid:verbs"): each peer
  // of this host over ipc, every other over libfabric (ibverbs), per link; a GPU tensor is
  // written directly only where both can write it (else staged); the plan costs each pair on
  // its own link (Options::hybrid_links).
  std::string backend = "fabric";
  // Tests of the hybrid backend only: this process tells its ipc peers it is on host `ipc_host`,
  // so that processes of one machine look like several hosts' (empty: the real host).
  std::string ipc_host;
  std::vector<std::string> nics = {"127.0.0.1"};  // per NIC of this process
  double deadline_s = 60;                         // every wait fails after this long
  // A plan saved by `weightcast plan --json FILE` (optional): loaded instead of planned, refused if
  // it was made for other specs. Saves every peer the planning time and memory.
  std::string plan_file;
  // Trainers: where registered shards live. -1: host memory (projections on the CPU); a CUDA
  // device index: shards are device pointers on that GPU (a torch tensor's data_ptr()), and
  // projections (cast, fused concat, FP8 quantization) run there. A pointer of the other kind is
  // refused by register_tensor. push() reads the shards on CUDA streams of its own: they must
  // hold the step's weights when it is called (synchronize the optimizer's stream first).
  // Receivers: -1, the engine's tensors are host memory; a CUDA device index: they are device
  // pointers on that GPU (a torch tensor's data_ptr()), written directly where the transport can
  // write GPU memory (verbs with dma-buf or nvidia-peermem, libfabric providers with FI_HMEM)
  // and staged otherwise (see receiver_staging). A pointer of the other kind is refused.
  int cuda_device = -1;
  // Receivers: "auto" (stage only what the transport cannot write, e.g. GPU memory over tcp),
  // "always" (every tensor lands in a registered host area first and is copied in per sender as
  // its immediates complete, before wait() returns), "never" (refuse what cannot be written
  // directly). WaitStats.mode says what ran.
  std::string receiver_staging = "auto";
  // Trainers: how gathers run. "host": the host collective, one-sided writes over this job's
  // backend (the NICs, or ipc). "nccl": NCCL sends and receives between the GPU shards of each
  // gather group (trainer ranks of one NVLink domain), needs cuda_device and libnccl.so.2 at run
  // time; every trainer of the job must say the same, and the plan costs gathers on NVLink.
  std::string gathers = "host";
  // A directory for traces of every step (Chrome trace / Perfetto JSON, one file per process:
  // <dir>/<trainer|inference>-<rank>-<pid>.trace.json; `weightcast trace merge` joins them).
  // Empty: $WEIGHTCAST_TRACE_DIR, and when that is unset too, no trace (docs/tracing.md).
  std::string trace_dir;
  // A file that collects one JSON line per step of every peer given it (several processes may
  // append to one file): metrics_json's record plus role, rank, pid, step, attempt and ok, or
  // the error of a failed step. Empty: $WEIGHTCAST_METRICS_FILE, else none (docs/tracing.md).
  std::string metrics_file;
  // Tests only: a fault-injecting layer under this peer's NICs (transport/fault_domain.h), e.g.
  // "fail_post=5" or "hold_arrivals=2:3". Empty in a real job.
  std::string faults;
};

// What one peer told the controller when it joined (Controller::wait_for_peers).
struct PeerInfo {
  std::string role;  // "trainer" or "inference"
  uint32_t rank = 0;
  std::string plan_digest;  // the inputs digest of the plan this peer runs
  uint32_t nics = 0;
  uint32_t tensors = 0;  // tensors it must register
  uint64_t bytes = 0;    // their total size
};

struct TensorInfo {
  std::string name;
  bool scales = false;  // the FP32 block scales of a quantized tensor
  std::string dtype;
  std::vector<int64_t> shape;  // local shape on this rank
  uint64_t bytes = 0;
  // The name the model itself gives this tensor: `name`, or for scales the spec's quant.scale
  // name (e.g. "...weight_scale_inv"); what register_module matches named_parameters() against.
  std::string model_name;
};

struct PushStats {
  uint64_t bytes = 0, writes = 0, projections = 0;
  double seconds = 0, projection_seconds = 0;
  double post_seconds = 0;  // posting writes to the NICs (the per-step CPU cost of a bound plan)
  // Projections whose kernels wrote straight into the receivers' GPU tensors (ipc backend, GPU
  // shards): no staging, no copy; their writes carried only the immediates.
  uint64_t in_place_projections = 0;
  // Where the step's time went (seconds, all within `seconds`): the first write waiting for the
  // receivers to be ready (gathers and projections run meanwhile), gathers, projections waiting
  // for staging slots, GPU shards copied to the host, and waiting for the last writes to
  // complete after everything was posted.
  double ready_seconds = 0, gather_seconds = 0, ring_wait_seconds = 0, mirror_seconds = 0,
         drain_seconds = 0;
  std::vector<double> nic_gbps;     // per NIC of this rank: bytes posted / step time
  std::vector<uint64_t> nic_bytes;  // per NIC of this rank: bytes posted this step
  uint64_t staging_peak_bytes = 0;  // most staging memory the step's writes read at once
  uint32_t reconnected = 0;         // receivers that had restarted, reconnected to this step
};

struct WaitStats {
  uint64_t bytes = 0, immediates = 0;
  double seconds = 0;
  uint32_t generation = 0;  // the generation this attempt armed
  uint64_t stale = 0;       // arrivals of older attempts dropped while it waited (late writes)
  // How the tensors took the writes: "host", "gpu" (registered GPU memory), "staged", or a mix
  // ("gpu+staged"); for staged tensors, the bytes copied in and how long the copy ran on after
  // the last sender's immediates (the staging cost not hidden behind the transfer).
  std::string mode;
  uint64_t staged_bytes = 0;
  double staging_s = 0;
};

// The per-step record of a peer as one JSON object (the fields above, stage seconds under
// "stages"): what JobConfig.metrics_file collects, one line per step, and what Python's
// to_json() gives. The line adds who and when: role, rank, pid, step, attempt, ok / error.
std::string metrics_json(const PushStats& s);
std::string metrics_json(const WaitStats& s);

class Controller {
 public:
  // Loads and plans the job, starts the rendezvous on an ephemeral port of `bind_host` and writes
  // its host:port into job.rendezvous (and, if job.token is empty, a 128-bit token from
  // getrandom(2): hand it to peers through a file or the environment, never a command line).
  static Result<Controller> start(JobConfig& job, const std::string& bind_host = "127.0.0.1");
  Controller(Controller&&) noexcept;
  Controller& operator=(Controller&&) noexcept;
  ~Controller();
  uint32_t senders() const;
  uint32_t receivers() const;
  std::string plan_report() const;  // the dry-run report of the plan in force
  // The credential to hand peer (role, rank) ("trainer" / "inference") instead of the job token:
  // its rendezvous session may write only that peer's own keys, so a compromised or buggy
  // process cannot overwrite another rank's descriptors. Pass it in JobConfig.token.
  std::string peer_token(const std::string& role, uint32_t rank) const;
  // Collects every trainer's and every inference rank's metadata from the rendezvous (each peer
  // publishes it when created) and checks it against the plan: same plan digest, same NIC count
  // on every peer (NIC groups must match), the tensor count and bytes the plan gives that rank.
  // Fails naming the peers that did not join before the deadline or that disagree.
  Result<std::vector<PeerInfo>> wait_for_peers(double deadline_s) const;
  // Peers whose current incarnation went away (its process exited or died: the rendezvous saw
  // its session close), as "inference 1" / "trainer 3". Returns at once; a dead receiver is
  // named here without waiting for any deadline.
  Result<std::vector<std::string>> lost_peers() const;
  // Serves the job's numbers as Prometheus text at http://host:port/metrics (port 0: a free
  // one) until the Controller is destroyed, and returns the port. From this call on, each peer
  // that joins puts its step record (metrics_json's, with who, step, ok and running totals)
  // where the controller reads it: one rendezvous put per step and peer. Call it before the
  // peers are created; those created earlier report nothing. docs/tracing.md lists the metrics.
  Result<uint16_t> serve_metrics(const std::string& host = "127.0.0.1", uint16_t port = 0);
  // The text GET /metrics answers, read from the rendezvous now (for a caller serving it).
  Result<std::string> metrics_text() const;

 private:
  struct Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Sender {
 public:
  static Result<Sender> create(const JobConfig& job, uint32_t trainer_rank);
  Sender(Sender&&) noexcept;
  Sender& operator=(Sender&&) noexcept;
  ~Sender();
  // The shards this rank must register, with their local shapes and sizes.
  std::vector<TensorInfo> tensors() const;
  Status register_tensor(const std::string& name, void* data, uint64_t bytes);
  // Connects to every receiver this rank writes to (all tensors must be registered).
  Status prepare();
  // Pushes this step's weights: waits until each of its receivers armed an attempt of the step
  // (Receiver::wait), then runs the rank's projections and writes, tagged with the generation
  // that receiver armed. Blocks until every write completed. A receiver that restarted (armed
  // under a new incarnation) is reconnected to first. Each attempt uses a receiver's arm once:
  // calling push(step) again (a retry) waits for a new arm. On failure every write already
  // posted has been drained (or the next push drains it first), and receivers were told to stop
  // waiting; what to do next is in docs/failures.md.
  Result<PushStats> push(uint64_t step);

 private:
  struct Impl;
  explicit Sender(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Receiver {
 public:
  static Result<Receiver> create(const JobConfig& job, uint32_t receiver_index);
  Receiver(Receiver&&) noexcept;
  Receiver& operator=(Receiver&&) noexcept;
  ~Receiver();
  std::vector<TensorInfo> tensors() const;
  Status register_tensor(const std::string& name, void* data, uint64_t bytes, bool scales = false);
  Status publish();
  // Arms a new attempt of the step (a fresh generation), tells its senders, and waits until every
  // expected immediate of that attempt has arrived: then every byte of the step has landed.
  // Writes of any earlier attempt never count. Fails at once when a sender aborted the attempt,
  // or after the deadline naming the senders whose writes are missing; never returns ok on a
  // partial update. Calling wait(step) again after a failure is the retry (docs/failures.md).
  Result<WaitStats> wait(uint64_t step);

 private:
  struct Impl;
  explicit Receiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weightcast::api
