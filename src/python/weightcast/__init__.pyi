# Type stubs for the weightcast Python module (src/python/weightcast_py.cpp).
from typing import List, Optional, Union

# A torch tensor (CPU or CUDA, contiguous, the plan's dtype and shape), a numpy array (the plan's
# shape and element size, or flat with exactly its bytes), any writable buffer, or an int: a raw
# pointer (needs nbytes). Mistakes raise ValueError naming the tensor.
Buffer = Union["torch.Tensor", "numpy.ndarray", memoryview, bytearray, int]

# the level of weightcast's log lines on stderr: trace, debug, info, warn (default: or
# $WEIGHTCAST_LOG), error, off; ValueError for any other name
def set_log_level(level: str) -> None: ...

class JobConfig:
    trainer_spec: str
    inference_spec: str
    topology: str
    rendezvous: str
    token: str
    provider: str
    backend: str  # "fabric" (libfabric `provider`, nics are IPs) or "verbs" (nics are RDMA devices)
    nics: List[str]
    deadline_s: float
    plan_file: str  # a plan saved by `weightcast plan --json`, loaded instead of planned
    # trainers: -1 for shards in host memory, else the CUDA device holding them (register
    # torch CUDA tensors' data_ptr(); projections then run on that GPU). push() reads them on
    # CUDA streams of its own: call torch.cuda.synchronize() after the optimizer step first.
    # receivers: -1 for host tensors, else the CUDA device the engine's tensors live on (written
    # directly where the transport can write GPU memory, staged through host memory otherwise)
    cuda_device: int
    receiver_staging: str  # receivers: "auto", "always" (every tensor staged) or "never"
    trace_dir: str  # traces of every step, one file per process (empty: $WEIGHTCAST_TRACE_DIR, else off)
    metrics_file: str  # one JSON line per step of every peer (empty: $WEIGHTCAST_METRICS_FILE, else none)
    faults: str  # tests only: a fault-injecting layer under this peer's NICs ("fail_post=5", ...)
    def __init__(self, trainer_spec: str, inference_spec: str, topology: str, rendezvous: str = "",
                 token: str = "", provider: str = "tcp", nics: List[str] = ["127.0.0.1"],
                 deadline_s: float = 60.0, plan_file: str = "", cuda_device: int = -1,
                 backend: str = "fabric") -> None: ...

class PeerInfo:
    role: str  # "trainer" or "inference"
    rank: int
    plan_digest: str
    nics: int
    tensors: int
    nbytes: int

class TensorInfo:
    name: str
    scales: bool
    dtype: str
    shape: List[int]
    nbytes: int
    model_name: str  # the model's own name for it (the spec's quant.scale name for scales)

class PushStats:
    bytes: int
    writes: int
    projections: int
    in_place_projections: int  # written by their kernels straight into GPU receivers (ipc)
    seconds: float
    projection_seconds: float
    post_seconds: float
    # where the time went (all within seconds): the first write waiting for the receivers to be
    # ready (gathers and projections run meanwhile), gathers, projections waiting for staging
    # slots, GPU shards copied to the host, the last writes completing
    ready_seconds: float
    gather_seconds: float
    ring_wait_seconds: float
    mirror_seconds: float
    drain_seconds: float
    nic_gbps: List[float]
    nic_bytes: List[int]  # bytes posted on each NIC this step
    staging_peak_bytes: int  # most staging memory the step's writes read at once
    reconnected: int  # receivers that had restarted, reconnected to this step
    def to_json(self) -> str: ...  # the step's record (json.loads gives a dict)

class WaitStats:
    bytes: int
    immediates: int
    seconds: float
    generation: int  # the generation this attempt armed (a fresh one per wait() call)
    stale: int  # arrivals of older attempts dropped while it waited (late writes, never counted)
    mode: str  # how the tensors took the writes: "host", "gpu", "staged" or a mix ("gpu+staged")
    staged_bytes: int  # bytes copied from the landing area into staged tensors
    staging_seconds: float  # how long that copy ran on after the last sender's immediates
    def to_json(self) -> str: ...  # the step's record (json.loads gives a dict)

class Controller:
    senders: int
    receivers: int
    def __init__(self, job: JobConfig, bind_host: str = "127.0.0.1") -> None: ...
    def plan_report(self) -> str: ...
    # the credential for peer (role, rank), "trainer"/"inference": give it as JobConfig.token
    # instead of the job token; that peer's session may write only its own rendezvous keys
    def peer_token(self, role: str, rank: int) -> str: ...
    def wait_for_peers(self, deadline_s: float = 60.0) -> List[PeerInfo]: ...
    # peers whose current process went away (its rendezvous session closed); returns at once
    def lost_peers(self) -> List[str]: ...
    # serves Prometheus text at http://host:port/metrics (0: a free port, returned); call it
    # before peers join (those created later put their step records where it reads them)
    def serve_metrics(self, host: str = "127.0.0.1", port: int = 0) -> int: ...
    def metrics_text(self) -> str: ...  # what GET /metrics answers, read now
    # close() stops the rendezvous at once; `with Controller(job) as ctl:` closes on the way out
    def close(self) -> None: ...
    def __enter__(self) -> "Controller": ...
    def __exit__(self, *exc: object) -> bool: ...

class Sender:
    def __init__(self, job: JobConfig, rank: int) -> None: ...
    def tensors(self) -> List[TensorInfo]: ...
    def register_tensor(self, name: str, buffer: Buffer, nbytes: Optional[int] = None) -> None: ...
    # every shard from module.named_parameters() (DTensors by to_local()); all checked first,
    # none registered on a mismatch; returns the module's parameters the plan does not use
    def register_module(self, module: "torch.nn.Module") -> List[str]: ...
    def prepare(self) -> None: ...
    def push(self, step: int) -> PushStats: ...
    # closes its NICs and session, then lets go of the registered tensors (also at a with's end);
    # a second register_tensor of one name raises
    def close(self) -> None: ...
    def __enter__(self) -> "Sender": ...
    def __exit__(self, *exc: object) -> bool: ...

class Receiver:
    def __init__(self, job: JobConfig, index: int) -> None: ...
    def tensors(self) -> List[TensorInfo]: ...
    def register_tensor(self, name: str, buffer: Buffer, nbytes: Optional[int] = None,
                        scales: bool = False) -> None: ...
    # every tensor from module.named_parameters(), matched by TensorInfo.model_name and checked
    # (dtype, shape, contiguity, device); refuses listing every mismatch before registering any
    def register_module(self, module: "torch.nn.Module") -> List[str]: ...
    def publish(self) -> None: ...
    def wait(self, step: int) -> WaitStats: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Receiver": ...
    def __exit__(self, *exc: object) -> bool: ...
