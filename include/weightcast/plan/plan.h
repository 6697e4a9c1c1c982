// The address-free transfer plan: per trainer rank an ordered task list (gather, project, write),
// per inference rank the exact immediate count to expect per phase. Plain data; addresses and
// keys are bound at run time. Serialised as weightcast.plan/v1 (plan_json.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weightcast/core/box.h"
#include "weightcast/core/dtype.h"

namespace weightcast::plan {

struct Options {
  uint64_t max_write_bytes = 16ull << 20;  // longer runs are split into writes of this size
  uint64_t max_unit_bytes = 64ull << 20;   // largest piece of work one projection handles
  // Packing trade: one write costs this much fixed time (posting, NIC, imm handling); merging
  // small units is worth it when the writes it saves cost more than the gather it adds: per piece
  // a root receives, gather_cost_us of fixed time (the member's send, the ranks meeting, the
  // root's wait) plus the bytes' NVLink time. Negative: the topology's `gather_us` (the
  // costliest trainer host's; 0 where it is not given). The plan records the value used.
  double write_cost_us = 2.0;
  double gather_cost_us = -1.0;
  uint64_t staging_watermark = 512ull << 20;  // per sender: gather buffers + projection ring
  bool intra_domain_gathers_only = false;     // refuse plans whose gathers cross NVLink domains
  // Every write and gather goes over a same-host link (the ipc backend: CUDA IPC or
  // process_vm_writev), costed at the hosts' nvlink_gbps instead of their NICs; every rank of
  // both sides must then be on one host.
  bool ipc_links = false;
  // The hybrid backend: a trainer/inference pair (and a gather's member and root) on one host
  // links over ipc, costed at the host's nvlink_gbps; pairs on different hosts use the NICs.
  // Each side's ipc link and NICs run at once, and a unit several ranks hold goes to the holder
  // that finishes it first on the link it would take (same-host holders win while their ipc
  // link is less busy than a remote holder's NICs).
  bool hybrid_links = false;
  // Gathers run on NCCL inside each NVLink domain (JobConfig.gathers "nccl"): pieces go over
  // the GPUs' NVLink, costed at the hosts' nvlink_gbps and apart from the NICs' writes. Without
  // it they run on the host collective, through the NICs (or the ipc links), and are costed so.
  bool nccl_gathers = false;
  // A bound on what planning may cost: more writes than this is an error (not serialised).
  uint64_t max_writes = uint64_t{1} << 24;
};

// One gather: `root` ends with `box` (global coords of trainer param `param`) in its staging at
// `root_off`, assembled from its own shard and `pieces` sent by other ranks (NCCL, batched per
// phase; every member runs the phase's gathers in ascending id order).
struct Gather {
  struct Piece {
    uint32_t rank;
    core::Box box;
  };
  uint16_t phase = 0;
  int32_t param = -1;
  core::Box box;
  uint32_t root = 0;
  std::vector<Piece> pieces;
  bool cross_domain = false;
  uint64_t bytes = 0;  // bytes received by the root
  uint64_t root_off = 0;
};

// Assembles `box` (local coords of dest tensor `dest`) from inputs and converts it into staging.
struct Project {
  enum class Kind : uint8_t { kCopy, kCast, kQuant };
  struct Input {
    uint32_t part = 0;    // which part of the dest param
    core::Box src;        // global coords of that part's trainer param
    int32_t gather = -1;  // -1: the sender's own shard; else the gather that brought it
  };
  uint32_t sender = 0;
  uint32_t dest = 0;
  uint16_t phase = 0;
  Kind kind = Kind::kCopy;
  core::Box box;
  std::vector<Input> inputs;
  uint64_t staging_off = 0, out_bytes = 0;
  int32_t scale_dest = -1;  // kQuant: the scale tensor, its box and staging offset
  core::Box scale_box;
  uint64_t scale_off = 0;
};

// One one-sided write carrying one immediate tagged (generation, phase, sender).
struct Write {
  static constexpr int32_t kDirect = -1;
  uint32_t sender = 0;
  uint32_t dest = 0;
  int32_t project = kDirect;  // kDirect: from the sender's shard of `src_param`, else staging
  int32_t src_param = -1;
  uint16_t phase = 0;
  uint8_t nic = 0, dst_nic = 0;
  uint64_t src_off = 0, dst_off = 0, len = 0;
};

struct Task {
  enum class Op : uint8_t { kGather, kProject, kWrite };
  Op op;
  uint32_t index;
};

struct Sender {
  uint32_t rank = 0;
  std::string host;
  int gpu = 0, nics = 1;
  double nic_gbps = 0, nvlink_gbps = 0;
  std::vector<Task> tasks;
  uint64_t staging_gather = 0, staging_ring = 0;  // peak bytes of each area
  uint64_t bytes_out = 0, gather_bytes_in = 0;
  std::vector<uint64_t> nic_bytes;
};

struct Receiver {
  uint32_t replica = 0, rank = 0;
  std::string host;
  int gpu = 0, nics = 1;
  double nic_gbps = 0;
  std::vector<uint32_t> expected_imms;  // per phase
  uint64_t bytes_in = 0;
  std::vector<uint64_t> nic_bytes;
};

// A buffer on an inference rank: a parameter's local shard, or the FP32 scales of one.
struct DestTensor {
  uint32_t receiver = 0;
  int32_t param = -1;  // index into the inference spec's params
  bool scale = false;
  core::Shape shape;
  core::DType dtype = core::DType::kBF16;
  uint64_t bytes = 0;
};

struct Plan {
  static constexpr const char* kFormat = "weightcast.plan/v1";
  Options options;
  std::string inputs_digest;  // of the three inputs, so a plan is never replayed on other specs
  int64_t scale = 1;
  uint16_t phases = 1;
  std::vector<std::string> source_names;  // trainer params, by index
  std::vector<std::string> dest_names;    // inference params, by index
  std::vector<DestTensor> dests;
  std::vector<Gather> gathers;
  std::vector<Project> projects;
  std::vector<Write> writes;
  std::vector<Sender> senders;
  std::vector<Receiver> receivers;
  // A rank's part (plan/part.h) says whose it is; empty for the whole plan.
  std::string part_role;  // "", "trainer" or "inference"
  uint32_t part_rank = 0;
  std::vector<uint32_t> dest_ids;  // parts: index of each dest in the whole plan
};

}  // namespace weightcast::plan
