// `weightcast demo` and its worker processes.
#pragma once

#include <string>

namespace weightcast::cli {

struct DemoOptions {
  std::string trainer, inference, topology;  // spec files (the demo writes the built-in ones)
  int steps = 5;
  int replicas = 1;
  int nics = 1;
  std::string provider = "tcp";
  std::string backend = "fabric";  // fabric (libfabric), verbs (ibverbs RC), ipc or hybrid
  // hybrid: the processes pose as this many hosts to each other (trainer i and inference i on
  // host i % hosts), so that some pairs link over ipc and the others over libfabric.
  int hosts = 1;
  std::string nic_list;         // comma-separated local IPs (fabric) or RDMA devices (verbs)
  std::string device = "host";  // where trainer shards live: host, or cuda (GPU projections)
  std::string inference_device = "host";  // where inference tensors live: host, or cuda
  std::string staging = "auto";           // receivers: auto, always, never (JobConfig)
  // GPUs to spread over: trainer rank r on GPU r % gpus, the inference ranks on the last one.
  int gpus = 1;
  std::string gathers = "host";  // trainers' gathers: host (collective) or nccl (JobConfig)
  double deadline_s = 60;
  double gather_cost_us = -1;     // the planner's packing trade (< 0: the topology's gather_us)
  double staging_mb = 0;          // the plan's staging watermark per sender (0: the planner's)
  int kill_trainer_at_step = 0;   // fault injection: trainer 0 dies mid-push at this step
  int kill_receiver_at_step = 0;  // fault injection: the last inference process is killed
                                  // before this step, and the driver must find and restart it
  int restart_receiver_at_step =
      0;                  // fault injection: inference 0 is killed and restarted before this step
  std::string weights;    // safetensors with the full trainer weights (else a pattern)
  std::string dump;       // directory: each inference rank writes what it got, last step
  std::string trace;      // directory: every process's trace of every step, merged at the end
  int metrics_port = -1;  // >= 0: the controller serves /metrics there (0: a free port)
  std::string self;       // path of this executable, to start workers
};

int run_demo(const DemoOptions& o);

// A demo worker: a trainer (Sender) or an inference process (Receiver). The job token comes in
// WEIGHTCAST_TOKEN, never in argv.
struct WorkerOptions {
  std::string role;  // trainer | inference
  int index = 0;
  std::string rdv;      // host:port
  int first_round = 1;  // a restarted worker joins at the driver's next round
  DemoOptions demo;
};
int run_worker(const WorkerOptions& w);

}  // namespace weightcast::cli
