// Specs from the ecosystem: the trainer, inference and topology JSON of a model, generated from
// its Hugging Face config.json and each side's parallelism (`weightcast spec`).
//
// The trainer side uses the checkpoint's parameter names with routed experts stacked per layer
// (`experts.w1` / `w3` [E, moe, hidden], `w2` [E, hidden, moe], as torchtitan and Megatron hold
// them; or transformers 5's fused `experts.gate_up_proj` / `down_proj`), sharded as FSDP2 (dim 0),
// HSDP (dp replicates), tensor parallelism (column / row), pipeline stages (contiguous layers) and
// expert parallelism (experts split over ep). The inference side is the layout vLLM holds in memory
// on Hopper with its default kernels (read from vLLM's model code, docs/spec-format.md names the
// version): fused qkv_proj (kv heads replicated when TP exceeds them), gate_up_proj, MLA's
// fused_qkv_a_proj, FusedMoE's stacked w13_weight / w2_weight, the vocab padded to a multiple of
// 64, FP8 128x128 weight_scale_inv.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/spec/spec.h"

namespace weightcast::spec {

struct GenerateOptions {
  // Trainer axes by name (pp, dp, ep, fsdp, tp; sizes, absent = 1), laid out in that order.
  std::vector<Axis> trainer;
  // One inference replica: dp (attention data parallel) and tp.
  std::vector<Axis> inference;
  int64_t replicas = 1;
  bool expert_parallel = false;  // experts over every rank of a replica (--enable-expert-parallel)
  // How the trainer holds routed experts: titan (experts.w1 / w3 [E, moe, hidden], w2), or hf
  // (transformers >= 5: experts.gate_up_proj [E, 2*moe, hidden], experts.down_proj), or hf4
  // (transformers 4's checkpoint names: experts.{e}.gate_proj.weight, one parameter per expert).
  std::string trainer_experts = "titan";
  // Trainer dense (non-expert) parameters: FSDP over every data-parallel rank, ep included
  // ("all", torchtitan), or over fsdp alone, replicated across EP groups ("fsdp").
  std::string dense_shard = "all";
  // vllm, or sglang: the same layout but for the names SGLang gives (MLA's
  // fused_qkv_a_proj_with_mqa)
  std::string engine = "vllm";
  std::string fp8 = "auto";  // auto (the config's quantization_config), none, experts, all
  int gpus_per_host = 8;
  int nics_per_gpu = 1;
  double nic_gbps = 400;
  std::string trainer_host = "trn{h}", inference_host = "inf{h}";
  // One machine of gpus_per_host GPUs named so: inference ranks after the trainer's, or on the
  // same GPUs when colocated (a colocated topology host: verl's hybrid engine, the ipc backend).
  std::string single_host;
  bool colocated = false;
  double gather_us = 0;    // the topology hosts' gather_us (0: not written)
  std::string model_name;  // default: the config's model_type and size
};

struct GeneratedSpecs {
  nlohmann::json trainer, inference, topology;
  std::vector<std::string> notes;  // what was decided: layout source, fp8, padding, kv heads
};

// Errors name the config field or the option at fault.
Result<GeneratedSpecs> generate_specs(const nlohmann::json& hf_config, const GenerateOptions& opts);

// `weightcast spec` arguments (everything after the subcommand but --config and --out), also
// what configs/<model>/spec.args holds: --trainer fsdp=8,ep=4 --inference tp=8 --replicas 2
// --expert-parallel --fp8 experts --gpus-per-host 8 --nic-gbps 400 --name NAME.
Result<GenerateOptions> parse_generate_args(const std::vector<std::string>& args);

}  // namespace weightcast::spec
