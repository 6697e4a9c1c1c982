// A Hugging Face config.json read into the numbers the spec generator needs (generate.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace weightcast::spec::detail {

struct HfModel {
  std::string type;  // model_type
  int64_t hidden = 0, layers = 0, vocab = 0, heads = 0, kv_heads = 0, head_dim = 0, inter = 0;
  bool tied = false, qkv_bias = false, qk_norm = false;
  // MoE: experts == 0 for dense models; moe_layer[i] says which layers route.
  int64_t experts = 0, moe_inter = 0, shared_inter = 0;
  std::vector<bool> moe_layer;
  bool router_bias = false;       // mlp.gate.e_score_correction_bias (fp32)
  std::string moe_scope = "mlp";  // Mixtral: block_sparse_moe
  // MLA (DeepSeek-V3, Kimi-K2); q_lora == 0 means a plain q_proj.
  bool mla = false;
  int64_t q_lora = 0, kv_lora = 0, nope = 0, rope = 0, v_head = 0;
  bool fp8_checkpoint = false;  // quantization_config: fp8 with 128x128 blocks
  // Module names the checkpoint leaves unquantized (quantization_config.ignored_layers, else
  // modules_to_not_convert), e.g. "lm_head", "model.layers.3.mlp.gate".
  std::vector<std::string> fp8_skip;
  int64_t mtp_layers = 0;  // num_nextn_predict_layers (not generated)
};

// Throws SpecError naming the config field ("config.json: num_key_value_heads: ...").
HfModel read_hf_config(const nlohmann::json& c);

}  // namespace weightcast::spec::detail
