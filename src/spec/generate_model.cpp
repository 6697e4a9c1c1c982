// Reads the model numbers out of a Hugging Face config.json, per model_type.
#include "generate_model.h"

#include <fmt/format.h>

#include <set>

#include "json_reader.h"

namespace weightcast::spec::detail {

namespace {

constexpr const char* kPath = "config.json";
constexpr int64_t kMax = int64_t{1} << 40;

int64_t num(const json& c, const char* key, int64_t fallback = -1) {
  const json* v = c.contains(key) && !c[key].is_null() ? &c[key] : nullptr;
  if (!v) {
    if (fallback >= 0) return fallback;
    fail(child(kPath, key), "missing (this model_type needs it)");
  }
  return get_int(*v, child(kPath, key), 0, kMax);
}

bool flag(const json& c, const char* key, bool fallback) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_boolean()) fail(child(kPath, key), "expected true or false");
  return c[key].get<bool>();
}

// Layers whose MLP routes: every layer from `first_dense` on, every `freq`-th, none listed in
// `dense_list`.
std::vector<bool> moe_layers(int64_t layers, int64_t first_dense, int64_t freq,
                             const std::set<int64_t>& dense_list) {
  std::vector<bool> out(static_cast<size_t>(layers));
  for (int64_t i = 0; i < layers; ++i)
    out[static_cast<size_t>(i)] =
        i >= first_dense && (freq <= 1 || (i + 1) % freq == 0) && !dense_list.count(i);
  return out;
}

void read_common(const json& c, HfModel& m) {
  m.hidden = num(c, "hidden_size");
  m.layers = num(c, "num_hidden_layers");
  m.vocab = num(c, "vocab_size");
  m.heads = num(c, "num_attention_heads");
  m.kv_heads = num(c, "num_key_value_heads", m.heads);
  m.inter = num(c, "intermediate_size");
  m.tied = flag(c, "tie_word_embeddings", false);
  if (m.hidden < 1 || m.layers < 1 || m.vocab < 1 || m.heads < 1 || m.kv_heads < 1)
    fail(kPath, "hidden_size, num_hidden_layers, vocab_size and the head counts must be >= 1");
  if (m.heads % m.kv_heads)
    fail(child(kPath, "num_key_value_heads"),
         fmt::format("{} kv heads do not divide {} attention heads", m.kv_heads, m.heads));
  if (!c.contains("head_dim") && m.hidden % m.heads)
    fail(child(kPath, "head_dim"),
         fmt::format("missing, and hidden_size {} is not a multiple of {} heads", m.hidden,
                     m.heads));
  m.head_dim = num(c, "head_dim", m.hidden / m.heads);
  if (const json* q = c.contains("quantization_config") ? &c["quantization_config"] : nullptr) {
    const std::string qp = child(kPath, "quantization_config");
    const std::string method = q->value("quant_method", "");
    if (method != "fp8")
      fail(child(qp, "quant_method"),
           fmt::format("'{}': only fp8 checkpoints (or unquantized ones) are understood", method));
    const json blocks = q->value("weight_block_size", json::array({128, 128}));
    if (blocks != json::array({128, 128}))
      fail(child(qp, "weight_block_size"),
           fmt::format("{}: only 128x128 blocks are supported", blocks.dump()));
    m.fp8_checkpoint = true;
    // The modules left unquantized: vLLM's Fp8Config reads ignored_layers, else
    // modules_to_not_convert.
    for (const char* key : {"ignored_layers", "modules_to_not_convert"}) {
      if (!q->contains(key) || (*q)[key].is_null()) continue;
      const std::string kp = child(qp, key);
      for (const json& n : require_array((*q)[key], kp)) m.fp8_skip.push_back(get_string(n, kp));
      if (!m.fp8_skip.empty()) break;
    }
  }
}

void read_mla(const json& c, HfModel& m) {
  m.mla = true;
  m.q_lora = num(c, "q_lora_rank", 0);
  m.kv_lora = num(c, "kv_lora_rank");
  m.nope = num(c, "qk_nope_head_dim");
  m.rope = num(c, "qk_rope_head_dim");
  m.v_head = num(c, "v_head_dim");
}

// DeepSeek-V3 style routed experts: n_routed_experts, shared experts, dense first layers.
void read_deepseek_moe(const json& c, HfModel& m) {
  m.experts = num(c, "n_routed_experts");
  m.moe_inter = num(c, "moe_intermediate_size");
  m.shared_inter = m.moe_inter * num(c, "n_shared_experts", 0);
  m.moe_layer =
      moe_layers(m.layers, num(c, "first_k_dense_replace", 0), num(c, "moe_layer_freq", 1), {});
  m.router_bias = c.value("topk_method", std::string("noaux_tc")) == "noaux_tc";
  m.mtp_layers = num(c, "num_nextn_predict_layers", 0);
}

}  // namespace

HfModel read_hf_config(const json& c) {
  require_object(c, kPath);
  HfModel m;
  m.type = get_string(require(c, "model_type", kPath), child(kPath, "model_type"));
  const std::string& t = m.type;
  if (t == "deepseek_v3" || t == "kimi_k2") {
    read_common(c, m);
    read_mla(c, m);
    read_deepseek_moe(c, m);
  } else if (t == "llama" || t == "mistral" || t == "qwen2" || t == "qwen3") {
    read_common(c, m);
    m.qkv_bias = t == "qwen2" || flag(c, "attention_bias", false);
    m.qk_norm = t == "qwen3";
  } else if (t == "qwen3_moe") {
    read_common(c, m);
    m.qkv_bias = flag(c, "attention_bias", false);
    m.qk_norm = true;
    // transformers 5 writes the count as num_local_experts (its attribute_map keeps num_experts).
    m.experts =
        num(c, c.contains("num_local_experts") && !c.contains("num_experts") ? "num_local_experts"
                                                                             : "num_experts");
    m.moe_inter = num(c, "moe_intermediate_size");
    std::set<int64_t> dense;
    if (c.contains("mlp_only_layers"))
      for (const json& l : require_array(c["mlp_only_layers"], child(kPath, "mlp_only_layers")))
        dense.insert(get_int(l, child(kPath, "mlp_only_layers"), 0, m.layers - 1));
    m.moe_layer = moe_layers(m.layers, 0, num(c, "decoder_sparse_step", 1), dense);
  } else if (t == "mixtral") {
    read_common(c, m);
    m.experts = num(c, "num_local_experts");
    m.moe_inter = m.inter;
    m.moe_scope = "block_sparse_moe";
    m.moe_layer.assign(static_cast<size_t>(m.layers), true);
  } else if (t == "glm4_moe") {
    read_common(c, m);
    m.qkv_bias = flag(c, "attention_bias", false);
    m.qk_norm = flag(c, "use_qk_norm", false);
    read_deepseek_moe(c, m);
  } else {
    fail(child(kPath, "model_type"),
         fmt::format("'{}' is not supported (llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, "
                     "deepseek_v3, kimi_k2, glm4_moe)",
                     t));
  }
  if (m.experts && (m.moe_inter < 1 || m.experts > 4096))
    fail(kPath,
         fmt::format("{} experts of {} rows: expected 1..4096 experts", m.experts, m.moe_inter));
  return m;
}

}  // namespace weightcast::spec::detail
