// The step simulator: replays a lowered plan as the executor runs it, on a machine profile, and
// says how long the step takes and where the time of its slowest path went. Plain data in, plain
// data out; `weightcast plan --profile` prints it, the perf benchmarks set it beside their
// measurements (docs/simulator.md).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"

namespace weightcast::sim {

// What the simulator assumes of the machines (weightcast.profile/v1 JSON). Rates in bytes per
// second unless named _gbps (gigabits, as the topology writes NIC rates); 0 means "take the
// topology's" where a field says so.
struct Profile {
  static constexpr const char* kFormat = "weightcast.profile/v1";
  std::string name;
  // NICs: a NIC moves `nic_efficiency` x the topology's nic_gbps (or nic_gbps here when set) in
  // each direction; every write shard costs write_us of NIC time on the sender on top of its
  // bytes, and lands latency_us after it leaves.
  double nic_gbps = 0;
  double nic_efficiency = 1.0;
  double write_us = 1.0;
  double latency_us = 0;
  // All NIC traffic of one host also crosses one shared path (PCIe root, memory bus; on loopback
  // the CPU doing the copies) of this many bytes/s; 0: no such limit.
  double host_bytes_per_s = 0;
  // ... and each write shard costs that path this long besides its bytes (on loopback, the CPUs
  // that do every copy also handle every write; 0 where NICs do the work).
  double host_write_us = 0;
  // Readiness: a sender's first write waits until it has read every receiver's arm from the
  // rendezvous: three requests (its record, all arms in one many-key request, its record again),
  // a round trip of ready_rtt_us each; the server spends ready_server_us on each request plus
  // ready_key_us on each arm it returns, for every sender at once at step start, in turn.
  double ready_rtt_us = 0, ready_server_us = 0, ready_key_us = 0;
  // Same-host links (ipc, NCCL gathers): bytes/s per GPU; 0: the topology's nvlink_gbps.
  double nvlink_bytes_per_s = 0;
  double gather_piece_us = 0;  // fixed cost per gathered piece; < 0: the topology's gather_us
  // Projections (fuse, cast, quantize): bytes read + written per second, plus a fixed cost each.
  double project_bytes_per_s = 1e12;
  double project_us = 0;
  // Projections on the CPU (shards in host memory) of one host's senders share this many cores,
  // one projection on a core at a time; 0: no limit (on the GPU each sender has its own).
  double cpu_cores = 0;
  // Loopback: the host path is those same cores (every copy a CPU's), so copies and CPU
  // projections share them; a copy holds one core for cpu_cores x its time on the path.
  bool host_path_on_cores = false;
  // Where shards and tensors live and what the NIC can touch: GPU data a NIC cannot read is
  // staged to pinned host memory at d2h (a staging copy per projection, a mirror per direct
  // shard); GPU tensors a NIC cannot write land in a host area and are copied in at h2d.
  bool shards_on_gpu = true, tensors_on_gpu = true;
  bool nic_reads_gpu = true, nic_writes_gpu = true;
  double d2h_bytes_per_s = 55e9, h2d_bytes_per_s = 55e9;
  // Senders do not begin together: rank i starts at a fixed spread of [0, start_skew_us).
  double start_skew_us = 0;
  std::map<std::string, std::string> sources;  // field -> where its number comes from

  Status check() const;
};
Result<Profile> parse_profile(const std::string& json_text, const std::string& where);
Result<Profile> load_profile(const std::string& path);
std::string profile_json(const Profile& p);

// Seconds a sender spent in each stage, on its own compute track (gathers, projections, ring
// waits) and its copy tracks; writes_s is the time its last write finished after its compute
// did (the writes not hidden behind its compute).
struct Stages {
  double skew_s = 0, gather_s = 0, project_s = 0, staging_s = 0, ring_wait_s = 0, writes_s = 0;
  double ready_s = 0;  // from its start until the receivers' arms were read (overlaps compute)
};

struct Simulation {
  double predicted_s = 0;
  double floor_s = 0;  // busiest receiver's bytes at its NICs' (or ipc link's) profiled rate
  // The slowest path: the receiver that finishes last, the sender whose bytes it waited for
  // last, and the sender NIC that carried them (-1: an ipc link).
  uint32_t receiver = 0, sender = 0;
  int nic = 0;
  Stages stages;               // of that sender
  double receiver_tail_s = 0;  // after that sender's last write: the receiver's staging copy
  double receiver_busy_s = 0;  // that receiver's busiest ingress link's busy time
  double sender_busy_s = 0;    // that sender's busiest NIC's (or ipc link's) busy time
  uint64_t writes = 0, shards = 0;
  std::vector<double> sender_done_s, receiver_done_s;
};

struct Options {
  // Chrome trace / Perfetto JSON of the predicted step (empty: none); bounded at max_events
  // (later spans are dropped, and the trace says so).
  std::string trace_path;
  size_t max_events = 200000;
  // What a projection reads per element (the trainer dtype's size), and the topology's fixed
  // cost per gathered piece (used where the profile's gather_piece_us is < 0).
  double source_bytes_per_elem = 2;
  double topology_gather_us = 0;
};

Result<Simulation> simulate(const plan::Plan& plan, const Profile& profile,
                            const Options& opts = {});

// The simulation as report lines (for `weightcast plan`), and as JSON (the plan JSON's
// "simulation").
std::string report(const Simulation& s, const Profile& p);
std::string to_json(const Simulation& s, const Profile& p);

}  // namespace weightcast::sim
