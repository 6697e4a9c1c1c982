// The sharding specs and topology as plain data: what the trainer holds where, what the inference
// engine wants where, and the machines in between. Parsed and validated by spec_parser.h.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "weightcast/core/box.h"
#include "weightcast/core/dtype.h"

namespace weightcast::spec {

struct Axis {
  std::string name;
  int64_t size = 1;
};

struct Device {
  std::string host;
  int gpu = 0;
};

// A device mesh: named axes (row-major rank order) and the device each rank runs on.
struct Mesh {
  std::vector<Axis> axes;
  std::vector<Device> devices;  // one per rank

  int64_t size() const;
  int64_t coord(int64_t rank, int axis) const;
  int axis_index(const std::string& name) const;  // -1 if absent
};

// DTensor-style placement on one mesh axis; kOwner means only coordinate `arg` holds the tensor
// (a pipeline stage, or the EP rank owning an expert stored as its own parameter). kHeads shards
// dim `arg` in whole heads of `unit` rows, as engines shard attention under tensor parallelism:
// with n heads over k ranks, each rank holds n/k heads when n >= k, else rank c holds head
// c*n/k (vLLM replicates each kv head over k/n ranks when TP exceeds the kv head count).
// kEven splits dim `arg` over all axes that say kEven for it, flattened in mesh order (rank
// coordinate c of k in all), as evenly as possible: n / k rows each, the first n % k ranks one
// more (vLLM's linear expert placement over dp x tp EP ranks, which need not divide n).
struct Placement {
  enum class Kind { kReplicate, kShard, kOwner, kHeads, kEven };
  Kind kind = Kind::kReplicate;
  int64_t arg = 0;
  int64_t unit = 0;  // kHeads: rows per head
  // kShard from DTensor's _StridedShard(dim, sf): FSDP2 over a TP-sharded dim. The shard is
  // taken after the other axes' shards of the dim (sf of them), not before as mesh order says.
  int64_t split_factor = 0;
  std::string str() const;  // "R", "S(0)", "O(3)", "H(0,128)", "SS(0,4)", "E(0)"
};

using PlacementMap = std::map<std::string, Placement>;  // axis name -> placement; absent = R

struct Param {
  std::string name;
  core::Shape shape;
  core::DType dtype = core::DType::kBF16;
  PlacementMap placement;
  std::string path;  // JSON path, for messages
};

struct TrainerSpec {
  Mesh mesh;
  std::vector<Param> params;
  std::unordered_map<std::string, int> index;  // name -> params[i]
};

// One input of an inference tensor: a trainer parameter, optionally with its last two dims swapped.
struct Part {
  int src = -1;  // index into TrainerSpec::params
  bool transpose = false;
  core::Shape shape;  // shape after the transpose
};

struct Quant {
  int64_t block_rows = 128, block_cols = 128;
  std::string scale_name;  // the FP32 scale tensor written next to the weight
};

// An inference tensor. Its local buffer on a rank is the concat, along concat_dim, of each part's
// own shard (the engine's fused layout: each TP rank holds its q, k and v heads back to back).
struct DestParam {
  std::string name;
  core::Shape shape;
  core::DType dtype = core::DType::kBF16;
  PlacementMap placement;
  std::vector<Part> parts;
  int concat_dim = 0;
  // "shard": "whole": placements split the concatenation as one tensor (ranks take whole parts,
  // or pieces of them), instead of each part on its own: a stack of per-expert weights split
  // over EP, as vLLM's FusedMoE holds the experts of a checkpoint that stores them one by one.
  bool concat_whole = false;
  // "view_items": the engine sees dim 0 as [items, rows per item] (FusedMoE's [E, 2*moe, hidden]
  // over a [E*2*moe, hidden] concatenation); 0: the shape as it is. Same bytes either way.
  int64_t view_items = 0;
  std::optional<Quant> quant;
  // Dims on which `shape` is larger than the mapped source: the engine pads them (vLLM's vocab
  // rows up to a multiple of 64). Placements split the padded shape; padding is never written.
  std::vector<int> pad_dims;
  std::string path;
};

struct InferenceSpec {
  std::vector<Mesh> replicas;
  std::vector<DestParam> params;
  std::unordered_map<std::string, int> index;
};

struct HostInfo {
  std::string name;
  int gpus = 8;
  int nics_per_gpu = 1;
  double nic_gbps = 400;      // per NIC, gigabits per second
  double nvlink_gbps = 3600;  // per GPU, for gather estimates
  // Fixed cost of one piece gathered on this host (the member's send, the ranks meeting, the
  // root's wait), on top of its bytes' NVLink time: near 0 for NCCL on NVLink; more for the
  // host collective over the fabric (docs/spec-format.md).
  double gather_us = 0;
  std::string nvlink_domain;  // hosts in one domain may gather among each other
  // A trainer rank and an inference rank may share a GPU (verl's hybrid engine; the ipc backend
  // writes between them). Two ranks of one side on one GPU are refused either way.
  bool colocated = false;
};

struct Topology {
  std::vector<HostInfo> hosts;
  std::unordered_map<std::string, int> index;
  const HostInfo* find(const std::string& host) const;
};

}  // namespace weightcast::spec
