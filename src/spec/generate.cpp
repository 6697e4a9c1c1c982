// `weightcast spec`: trainer, inference and topology specs from a Hugging Face config.json. Each
// tensor class is described once (trainer shape and TP role, inference fused layout and FP8);
// placements follow from the two sides' parallelism. generate.h says whose layouts these are.
#include "weightcast/spec/generate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

#include "generate_model.h"
#include "json_reader.h"

namespace weightcast::spec {

using namespace detail;  // NOLINT: internal helpers of this module

namespace {

constexpr int64_t kBlock = 128;
constexpr int64_t kVocabPadding = 64;  // vLLM's DEFAULT_VOCAB_PADDING_SIZE

// How a weight splits under tensor parallelism: column-parallel rows, row-parallel columns,
// whole heads (qkv, MLA's per-head projections), the vocab, or not at all.
enum class Tp { kNone, kCol, kRow, kHeads, kVocab, kExpertCol, kExpertRow };

enum class Where { kLayer, kFirst, kLast };

struct Source {
  std::string name;  // trainer name, "{i}" for the layer
  json shape;
  Tp tp = Tp::kNone;
  std::string dtype = "bf16";
};

struct Gen {
  const HfModel& m;
  const GenerateOptions& o;
  json dims = json::object();
  std::map<std::string, int64_t> dim_values;
  json tparams = json::array(), iparams = json::array();
  std::vector<std::string> notes;
  std::map<std::string, int64_t> t, i;  // axis sizes (1 when absent)
  bool fp8_linear = false, fp8_experts = false;

  std::string dim(const std::string& name, int64_t v) {
    dims[name] = v;
    dim_values[name] = v;
    return name;
  }
  int64_t value(const json& extent) const {
    if (extent.is_number_integer()) return extent.get<int64_t>();
    std::string s = extent.get<std::string>();
    int64_t f = 1;
    if (s.rfind("2*", 0) == 0) {
      f = 2;
      s = s.substr(2);
    }
    return f * dim_values.at(s);
  }
  static int64_t size(const std::map<std::string, int64_t>& axes, const char* n) {
    auto it = axes.find(n);
    return it == axes.end() ? 1 : it->second;
  }

  // Trainer placement: pipeline stage, experts over ep, FSDP2 on dim 0 over the sharding axes
  // (strided where TP shards dim 0 first), TP by the weight's role.
  json trainer_placement(Tp tp, Where where) const {
    json p = json::object();
    const int64_t pp = size(t, "pp"), ttp = size(t, "tp");
    if (t.count("pp")) {
      const int64_t per = (m.layers + pp - 1) / pp;
      p["pp"] = where == Where::kLayer   ? fmt::format("O({{i/{}}})", per)
                : where == Where::kFirst ? std::string("O(0)")
                                         : fmt::format("O({})", pp - 1);
    }
    const bool expert = tp == Tp::kExpertCol || tp == Tp::kExpertRow;
    int tp_dim = -1;
    if (t.count("tp") && ttp > 1) {
      tp_dim = tp == Tp::kCol || tp == Tp::kHeads || tp == Tp::kVocab ? 0
               : tp == Tp::kRow || tp == Tp::kExpertCol               ? 1
               : tp == Tp::kExpertRow                                 ? 2
                                                                      : -1;
      if (tp_dim >= 0) p["tp"] = fmt::format("S({})", tp_dim);
    }
    const std::string fsdp =
        tp_dim == 0 ? fmt::format("_StridedShard(dim=0, sf={})", ttp) : std::string("S(0)");
    // Dense parameters: FSDP over the whole data-parallel group, ep ranks included (torchtitan),
    // or over fsdp alone with each EP group holding a copy (--dense-shard fsdp).
    if (t.count("ep") && (expert || o.dense_shard == "all"))
      p["ep"] = expert ? std::string("S(0)") : fsdp;
    if (t.count("fsdp")) p["fsdp"] = fsdp;
    return p;
  }

  // Inference placement of a weight of `role` in a replica (mesh [dp,] tp).
  json inference_placement(Tp tp, const std::string& head_dim = "") const {
    json p = json::object();
    switch (tp) {
      case Tp::kCol:
      case Tp::kVocab:
        p["tp"] = "S(0)";
        break;
      case Tp::kHeads:
        p["tp"] = "H(0, " + head_dim + ")";
        break;
      case Tp::kRow:
        p["tp"] = "S(1)";
        break;
      case Tp::kExpertCol:
      case Tp::kExpertRow:
        if (o.expert_parallel) {
          // Contiguous experts per EP rank; when the ranks do not divide them, vLLM's linear
          // placement: the first E % ranks ranks one expert more (E: flattened over dp x tp).
          const char* ep = m.experts % (size(i, "dp") * size(i, "tp")) ? "E(0)" : "S(0)";
          if (i.count("dp")) p["dp"] = ep;
          p["tp"] = ep;
        } else {
          // Without EP, vLLM's FusedMoE flattens TP across attention DP: the moe dim is split
          // over all dp x tp ranks, rank (d, t) holding chunk d * tp + t (mesh order nests so).
          p["tp"] = tp == Tp::kExpertCol ? "S(1)" : "S(2)";
          if (i.count("dp")) p["dp"] = p["tp"];
        }
        break;
      case Tp::kNone:
        break;
    }
    return p;
  }

  static std::string layer_name(const std::string& suffix) { return "model.layers.{i}." + suffix; }

  void trainer_param(const Source& s, Where where, const json& range) {
    json p = {{"name", s.name}, {"shape", s.shape}, {"dtype", s.dtype}};
    json pl = trainer_placement(s.tp, where);
    if (!pl.empty()) p["placement"] = pl;
    if (!range.is_null()) p["for"] = range;
    tparams.push_back(p);
  }

  // One inference tensor from sources concatenated on `dim` (each sharded on its own), FP8
  // block-quantized when `fp8`.
  void inference_param(const std::string& name, const std::vector<Source>& parts, int cat_dim,
                       Tp tp, bool fp8, const json& range, const std::string& head = "") {
    json shape = parts[0].shape;
    if (parts.size() > 1) {
      int64_t rows = 0;
      for (const Source& s : parts) rows += value(s.shape[static_cast<size_t>(cat_dim)]);
      shape[static_cast<size_t>(cat_dim)] = fused_dim(parts, cat_dim, rows);
    }
    json p = {{"name", name}, {"shape", shape}, {"dtype", parts[0].dtype}};
    json pl = inference_placement(tp, head);
    if (!pl.empty()) p["placement"] = pl;
    if (!range.is_null()) p["for"] = range;
    if (parts.size() == 1) {
      p["from"] = parts[0].name;
    } else {
      json names = json::array();
      for (const Source& s : parts) names.push_back(s.name);
      p["from"] = {{"concat", names}, {"dim", cat_dim}};
    }
    if (fp8) {
      check_fp8(name, parts, cat_dim, pl, tp == Tp::kExpertCol || tp == Tp::kExpertRow);
      p["dtype"] = "fp8_e4m3";
      p["quant"] = {{"block", {kBlock, kBlock}}, {"scale", name + "_scale_inv"}};
    }
    iparams.push_back(p);
  }

  // The name of a fused extent: "2*x" for two equal parts, else a named sum.
  json fused_dim(const std::vector<Source>& parts, int cat_dim, int64_t rows) {
    const json& a = parts[0].shape[static_cast<size_t>(cat_dim)];
    if (parts.size() == 2 && a == parts[1].shape[static_cast<size_t>(cat_dim)] && a.is_string() &&
        a.get<std::string>().find('*') == std::string::npos)
      return "2*" + a.get<std::string>();
    std::string n;
    for (const Source& s : parts)
      n += (n.empty() ? "" : "+") + s.shape[static_cast<size_t>(cat_dim)].get<std::string>();
    return dim(n, rows);
  }

  // Rows (or columns) of `n` held per rank under placement string `s` on an axis of `k` ranks.
  int64_t local_extent(int64_t n, const std::string& s, int64_t k) const {
    if (s[0] != 'H') return (n + k - 1) / k;
    const int64_t unit = value(s.substr(s.find(' ') + 1, s.size() - s.find(' ') - 2));
    const int64_t heads = n / unit;
    return heads >= k ? heads / k * unit : unit;
  }

  // vLLM's block-FP8 loader needs every shard's rows and sharded columns in whole blocks (the
  // last part of a fused tensor's rows may end in a partial block).
  void check_fp8(const std::string& name, const std::vector<Source>& parts, int cat_dim,
                 const json& pl, bool expert) const {
    const int nd = static_cast<int>(parts[0].shape.size());
    for (size_t k = 0; k < parts.size(); ++k)
      for (int d = nd - 2; d < nd; ++d) {
        int64_t n = value(parts[k].shape[static_cast<size_t>(d)]);
        bool sharded = false;
        for (const auto& [axis, place] : pl.items()) {
          const std::string s = place.get<std::string>();
          const int64_t ranks = size(i, axis.c_str());
          if (ranks > 1 &&
              (s == fmt::format("S({})", d) || s.rfind(fmt::format("H({},", d), 0) == 0)) {
            n = local_extent(n, s, ranks);
            sharded = true;
          }
        }
        const bool ragged_ok = d == nd - 2 && (d != cat_dim || k + 1 == parts.size()) && !sharded;
        if (n % kBlock && !ragged_ok && !(d == nd - 1 && !sharded))
          fail("--fp8", fmt::format("'{}': {} {} of {} per rank are not whole 128-blocks, which "
                                    "vLLM's block-FP8 weights need ({})",
                                    name, n, d == nd - 2 ? "rows" : "columns", parts[k].name,
                                    expert ? "use --fp8 none, --expert-parallel, or another "
                                             "inference TP"
                                           : "use --fp8 experts or none, or another inference "
                                             "TP"));
      }
  }
  // --- the model, tensor class by tensor class ---

  json layers(int64_t lo, int64_t hi) const { return {{"i", {lo, hi}}}; }

  // A weight the trainer holds as `src` and vLLM as the same tensor (norms, routers, o_proj...).
  void same(const Source& src, Tp inf_tp, bool fp8, const json& range, Where w = Where::kLayer) {
    trainer_param(src, w, range);
    inference_param(src.name, {src}, 0, inf_tp, fp8, range);
  }

  void embeddings() {
    const std::string vocab = dim("vocab", m.vocab);
    const std::string hidden = "hidden";
    const int64_t padded = (m.vocab + kVocabPadding - 1) / kVocabPadding * kVocabPadding;
    auto table = [&](const std::string& name, Where w) {
      Source s{name, {vocab, hidden}, Tp::kVocab};
      trainer_param(s, w, nullptr);
      inference_param(name, {s}, 0, Tp::kVocab, false, nullptr);
      if (padded == m.vocab) return;
      iparams.back()["shape"] = {dim("vocab_padded", padded), hidden};
      iparams.back()["pad"] = {0};
    };
    table("model.embed_tokens.weight", Where::kFirst);
    if (!m.tied) table("lm_head.weight", Where::kLast);
    same({"model.norm.weight", {hidden}}, Tp::kNone, false, nullptr, Where::kLast);
    if (padded != m.vocab)
      notes.push_back(
          fmt::format("vocab {} padded to {} rows (vLLM pads to a multiple of {}; "
                      "the padding is never written)",
                      m.vocab, padded, kVocabPadding));
    if (m.tied) notes.push_back("tie_word_embeddings: lm_head is embed_tokens on both sides");
  }

  void gqa_attention(const json& all) {
    const std::string head = dim("head", m.head_dim);
    const std::string q = dim("q", m.heads * m.head_dim), kv = dim("kv", m.kv_heads * m.head_dim);
    const std::string pre = layer_name("self_attn.");
    for (const char* suffix : {"weight", "bias"}) {
      const bool w = std::string(suffix) == "weight";
      if (!w && !m.qkv_bias) continue;
      std::vector<Source> parts;
      for (const auto& [n, rows] : {std::pair{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}}) {
        Source s{pre + n + "." + suffix, w ? json{rows, "hidden"} : json{rows}, Tp::kHeads};
        trainer_param(s, Where::kLayer, all);
        parts.push_back(s);
      }
      inference_param(pre + "qkv_proj." + suffix, parts, 0, Tp::kHeads, w && fp8_linear, all, head);
    }
    same({pre + "o_proj.weight", {"hidden", q}, Tp::kRow}, Tp::kRow, fp8_linear, all);
    if (m.qk_norm)
      for (const char* n : {"q_norm", "k_norm"})
        same({pre + n + ".weight", {head}}, Tp::kNone, false, all);
    const int64_t tp = size(i, "tp");
    if (tp > m.kv_heads)
      notes.push_back(
          fmt::format("inference TP {} exceeds the {} kv heads: each kv head is "
                      "replicated on {} ranks (vLLM's rule)",
                      tp, m.kv_heads, tp / m.kv_heads));
  }

  void mla_attention(const json& all) {
    const std::string pre = layer_name("self_attn.");
    const std::string kv_lora = dim("kv_lora", m.kv_lora), kv_a = dim("kv_a", m.kv_lora + m.rope);
    const std::string qk_head = dim("qk_head", m.nope + m.rope),
                      kv_head = dim("kv_head", m.nope + m.v_head);
    const std::string q_b = dim("q_b", m.heads * (m.nope + m.rope));
    const Source kv_a_proj{pre + "kv_a_proj_with_mqa.weight", {kv_a, "hidden"}};
    if (m.q_lora) {
      const std::string q_lora = dim("q_lora", m.q_lora);
      const Source q_a{pre + "q_a_proj.weight", {q_lora, "hidden"}};
      trainer_param(q_a, Where::kLayer, all);
      trainer_param(kv_a_proj, Where::kLayer, all);
      inference_param(pre + (o.engine == "sglang" ? "fused_qkv_a_proj_with_mqa.weight"
                                                  : "fused_qkv_a_proj.weight"),
                      {q_a, kv_a_proj}, 0, Tp::kNone, fp8_linear, all);
      same({pre + "q_a_layernorm.weight", {q_lora}}, Tp::kNone, false, all);
      Source qb{pre + "q_b_proj.weight", {q_b, q_lora}, Tp::kHeads};
      trainer_param(qb, Where::kLayer, all);
      inference_param(qb.name, {qb}, 0, Tp::kHeads, fp8_linear, all, qk_head);
    } else {
      Source qp{pre + "q_proj.weight", {q_b, "hidden"}, Tp::kHeads};
      trainer_param(qp, Where::kLayer, all);
      inference_param(qp.name, {qp}, 0, Tp::kHeads, fp8_linear, all, qk_head);
      same(kv_a_proj, Tp::kNone, fp8_linear, all);
    }
    same({pre + "kv_a_layernorm.weight", {kv_lora}}, Tp::kNone, false, all);
    Source kvb{pre + "kv_b_proj.weight",
               {dim("kv_b", m.heads * (m.nope + m.v_head)), kv_lora},
               Tp::kHeads};
    trainer_param(kvb, Where::kLayer, all);
    inference_param(kvb.name, {kvb}, 0, Tp::kHeads, fp8_linear, all, kv_head);
    same({pre + "o_proj.weight", {"hidden", dim("o", m.heads * m.v_head)}, Tp::kRow}, Tp::kRow,
         fp8_linear, all);
    notes.push_back(o.engine == "sglang"
                        ? "MLA: SGLang derives w_kc / w_vc from kv_b_proj after loading; after an "
                          "update the engine must run that step again (post_load_weights)"
                        : "MLA: vLLM derives W_UK / W_UV from kv_b_proj after loading; after an "
                          "update the engine must run that step again "
                          "(process_weights_after_loading)");
  }

  // gate_proj + up_proj -> gate_up_proj, down_proj: a dense MLP or a shared expert; `whole`:
  // unsplit on every inference rank (vLLM's disable_tp).
  void mlp(const std::string& scope, const std::string& rows, bool fp8, const json& range,
           bool whole = false) {
    std::vector<Source> gu;
    for (const char* n : {"gate_proj", "up_proj"}) {
      Source s{scope + n + ".weight", {rows, "hidden"}, Tp::kCol};
      trainer_param(s, Where::kLayer, range);
      gu.push_back(s);
    }
    inference_param(scope + "gate_up_proj.weight", gu, 0, whole ? Tp::kNone : Tp::kCol, fp8, range);
    same({scope + "down_proj.weight", {"hidden", rows}, Tp::kRow}, whole ? Tp::kNone : Tp::kRow,
         fp8, range);
  }

  // The checkpoint's unquantized modules (--fp8 auto), as vLLM's is_layer_skipped decides per
  // layer: a fused module (qkv_proj, gate_up_proj, MLA's fused_qkv_a_proj) when all of its parts
  // are named, refused when only some are; else a module naming experts when it is part of any
  // named module that names experts (one expert named skips the layer's experts); else by its
  // exact name. Layers
  // skipped are split off into entries of their own, in the trainer's dtype, unquantized.
  void apply_fp8_skips() {
    const std::set<std::string> skip(m.fp8_skip.begin(), m.fp8_skip.end());
    static const std::map<std::string, std::vector<std::string>> packed = {
        {"qkv_proj", {"q_proj", "k_proj", "v_proj"}},
        {"gate_up_proj", {"gate_proj", "up_proj"}},
        {"fused_qkv_a_proj", {"q_a_proj", "kv_a_proj_with_mqa"}},
        {"fused_qkv_a_proj_with_mqa", {"q_a_proj", "kv_a_proj_with_mqa"}}};
    auto skipped = [&](const std::string& module) {
      const size_t dot = module.rfind('.');
      if (auto pk = packed.find(module.substr(dot + 1)); pk != packed.end()) {
        std::vector<std::string> named;
        for (const std::string& part : pk->second)
          if (skip.count(module.substr(0, dot + 1) + part)) named.push_back(part);
        if (!named.empty() && named.size() != pk->second.size())
          fail("config.json.quantization_config",
               fmt::format("'{}' leaves {} unquantized but not the rest of fused {} ({}); vLLM "
                           "refuses such a checkpoint too",
                           module.substr(0, dot + 1), fmt::join(named, ", "), module,
                           fmt::join(pk->second, ", ")));
        return !named.empty();
      }
      if (module.find("experts") != std::string::npos) {
        for (const std::string& s : skip)
          if (s.find("experts") != std::string::npos && s.find(module) != std::string::npos)
            return true;
        return false;
      }
      return skip.count(module) > 0;
    };
    json out = json::array();
    int64_t split = 0;
    for (const json& p : iparams) {
      if (!p.contains("quant")) {
        out.push_back(p);
        continue;
      }
      const std::string name = p["name"].get<std::string>();
      const std::string module = name.substr(0, name.rfind('.'));
      auto emit = [&](const json& range, bool unquantized) {
        json q = p;
        if (!range.is_null()) q["for"] = range;
        if (unquantized) {
          q.erase("quant");
          q["dtype"] = "bf16";
          ++split;
        }
        out.push_back(q);
      };
      if (!p.contains("for") || !p["for"].contains("i")) {
        emit(json(), skipped(module));
        continue;
      }
      const int64_t lo = p["for"]["i"][0].get<int64_t>(), hi = p["for"]["i"][1].get<int64_t>();
      for (int64_t a = lo; a < hi;) {
        auto at = [&](int64_t l) {
          std::string s = module;
          if (const size_t k = s.find("{i}"); k != std::string::npos)
            s.replace(k, 3, std::to_string(l));
          return skipped(s);
        };
        const bool run = at(a);
        int64_t b = a + 1;
        while (b < hi && at(b) == run) ++b;
        json range = p["for"];
        range["i"] = {a, b};
        emit(range, run);
        a = b;
      }
    }
    iparams = std::move(out);
    notes.push_back(fmt::format(
        "quantization_config leaves {} module(s) unquantized; {} of the spec's FP8 entries "
        "(runs of layers) are in bf16 for them, as vLLM loads them",
        m.fp8_skip.size(), split));
  }

  // vLLM's sequence-parallel MoE (use_sequence_parallel_moe: expert parallel, dp > 1, tp > 1,
  // and an all2all backend such as the default allgather_reducescatter or DeepEP): DeepSeek-V2/V3
  // and Kimi-K2 then build their shared experts with disable_tp, whole on every rank.
  bool shared_experts_whole() const {
    return o.engine == "vllm" && o.expert_parallel && size(i, "dp") > 1 && size(i, "tp") > 1 &&
           (m.type == "deepseek_v3" || m.type == "kimi_k2");
  }

  void moe(const json& range) {
    const std::string scope = layer_name(m.moe_scope + ".");
    const std::string moe = dim("moe", m.moe_inter);
    same({scope + "gate.weight", {m.experts, "hidden"}}, Tp::kNone, false, range);
    // GLM-4.5: the router is an fp32 nn.Linear in vLLM (and in SGLang since its stale-routing
    // fix), fed fp32 hidden states; the trainer's bf16 router is cast on the way.
    if (m.type == "glm4_moe") iparams.back()["dtype"] = "fp32";
    if (m.router_bias)
      same({scope + "gate.e_score_correction_bias", {m.experts}, Tp::kNone, "fp32"}, Tp::kNone,
           false, range);
    if (m.shared_inter)
      mlp(scope + "shared_experts.", dim("shared", m.shared_inter), fp8_linear, range,
          shared_experts_whole());
    const std::string ex = scope + "experts.";
    if (o.trainer_experts == "hf4") return per_expert(ex, moe, range);
    if (o.trainer_experts == "hf") {
      // transformers >= 5: gate and up fused per expert, [E, 2*moe, hidden], as w13 is.
      const Source gu{ex + "gate_up_proj", {m.experts, "2*" + moe, "hidden"}, Tp::kExpertCol};
      const Source down{ex + "down_proj", {m.experts, "hidden", moe}, Tp::kExpertRow};
      trainer_param(gu, Where::kLayer, range);
      trainer_param(down, Where::kLayer, range);
      inference_param(ex + "w13_weight", {gu}, 0, Tp::kExpertCol, fp8_experts, range);
      inference_param(ex + "w2_weight", {down}, 0, Tp::kExpertRow, fp8_experts, range);
      return;
    }
    const Source w1{ex + "w1", {m.experts, moe, "hidden"}, Tp::kExpertCol};
    const Source w3{ex + "w3", {m.experts, moe, "hidden"}, Tp::kExpertCol};
    const Source w2{ex + "w2", {m.experts, "hidden", moe}, Tp::kExpertRow};
    for (const Source* s : {&w1, &w3, &w2}) trainer_param(*s, Where::kLayer, range);
    inference_param(ex + "w13_weight", {w1, w3}, 1, Tp::kExpertCol, fp8_experts, range);
    inference_param(ex + "w2_weight", {w2}, 0, Tp::kExpertRow, fp8_experts, range);
  }

  // transformers 4's checkpoint names: one parameter per expert (experts.{e}.gate_proj.weight),
  // owned by EP rank e / (E / ep) on the trainer. vLLM stacks them: w13_weight is the concat of
  // gate_e, up_e for every e, seen as [E, 2*moe, hidden]; over EP the concatenation is split
  // whole (each rank its experts), over TP each part on its own (each expert's rows split).
  void per_expert(const std::string& ex, const std::string& moe, const json& range) {
    json erange = range;
    erange["e"] = {0, m.experts};
    const int64_t tep = size(t, "ep");
    auto owner = [&](const Source& s) {
      trainer_param(s, Where::kLayer, erange);
      if (t.count("ep"))
        tparams.back()["placement"]["ep"] = fmt::format("O({{e/{}}})", m.experts / tep);
    };
    owner({ex + "{e}.gate_proj.weight", {moe, "hidden"}, Tp::kCol});
    owner({ex + "{e}.up_proj.weight", {moe, "hidden"}, Tp::kCol});
    owner({ex + "{e}.down_proj.weight", {"hidden", moe}, Tp::kRow});
    const int64_t tp = o.expert_parallel ? 1 : size(i, "tp") * size(i, "dp");  // (flattened)
    auto stacked = [&](const std::string& name, std::initializer_list<const char*> per, json shape,
                       const char* tp_place, int64_t local_rows, int64_t local_cols) {
      json names = json::array();
      for (int64_t e = 0; e < m.experts; ++e)
        for (const char* n : per) names.push_back(ex + std::to_string(e) + "." + n + ".weight");
      json p = {{"name", name},
                {"shape", shape},
                {"dtype", "bf16"},
                {"view_items", m.experts},
                {"from", {{"concat", names}, {"dim", 0}}}};
      if (!range.is_null()) p["for"] = range;
      json pl = json::object();
      if (o.expert_parallel) {
        if (i.count("dp")) pl["dp"] = "S(0)";
        pl["tp"] = "S(0)";
        p["from"]["shard"] = "whole";
      } else if (tp > 1) {
        pl["tp"] = tp_place;
        if (i.count("dp")) pl["dp"] = tp_place;
      }
      if (!pl.empty()) p["placement"] = pl;
      if (fp8_experts) {
        if (local_rows % kBlock || local_cols % kBlock)
          fail("--fp8", fmt::format("'{}': experts of {} rows x {} columns per rank are not whole "
                                    "128-blocks (use --fp8 none, or --expert-parallel)",
                                    name, local_rows, local_cols));
        p["dtype"] = "fp8_e4m3";
        p["quant"] = {{"block", {kBlock, kBlock}}, {"scale", name + "_scale_inv"}};
      }
      iparams.push_back(p);
    };
    stacked(ex + "w13_weight", {"gate_proj", "up_proj"},
            {fmt::format("{}*{}", 2 * m.experts, moe), "hidden"}, "S(0)", m.moe_inter / tp,
            m.hidden);
    stacked(ex + "w2_weight", {"down_proj"}, {fmt::format("{}*hidden", m.experts), moe}, "S(1)",
            m.hidden, m.moe_inter / tp);
  }

  void model() {
    dim("hidden", m.hidden);
    embeddings();
    const json all = layers(0, m.layers);
    if (m.mla)
      mla_attention(all);
    else
      gqa_attention(all);
    for (const char* n : {"input_layernorm", "post_attention_layernorm"})
      same({layer_name(std::string(n) + ".weight"), {"hidden"}}, Tp::kNone, false, all);
    for (int64_t lo = 0; lo < m.layers;) {  // runs of dense and of MoE layers
      const bool routed = !m.moe_layer.empty() && m.moe_layer[static_cast<size_t>(lo)];
      int64_t hi = lo + 1;
      while (hi < m.layers &&
             (!m.moe_layer.empty() && m.moe_layer[static_cast<size_t>(hi)]) == routed)
        ++hi;
      if (routed)
        moe(layers(lo, hi));
      else
        mlp(layer_name("mlp."), dim("inter", m.inter), fp8_linear, layers(lo, hi));
      lo = hi;
    }
    if (m.shared_inter && shared_experts_whole())
      notes.push_back(
          "shared experts whole on every rank: vLLM's sequence-parallel MoE (expert parallel, "
          "dp > 1, tp > 1, all2all backend allgather_reducescatter (the default), deepep_* , "
          "mori_* or nixl_ep) builds them with disable_tp; with another all2all backend they "
          "are split over tp");
    if (m.type == "glm4_moe")
      notes.push_back(o.engine == "sglang"
                          ? "GLM-4.5 router gate.weight in fp32: SGLang versions between its "
                            "PR #21660 and the stale-routing fix (#35883) cache an fp32 copy at "
                            "the first forward, so updates to the gate are not used; run a "
                            "version with #35883"
                          : "GLM-4.5 router gate.weight in fp32, as vLLM builds it (nn.Linear, "
                            "dtype float32)");
    if (m.experts && o.expert_parallel && m.experts % (size(i, "dp") * size(i, "tp"))) {
      const int64_t k = size(i, "dp") * size(i, "tp");
      notes.push_back(fmt::format(
          "{} experts over {} EP ranks: ranks 0..{} hold {} experts, the others {} (vLLM's "
          "linear placement, determine_expert_map; versions before it gave the remainder to "
          "the last rank)",
          m.experts, k, m.experts % k - 1, m.experts / k + 1, m.experts / k));
    }
    if (m.experts && !o.expert_parallel && size(i, "dp") > 1)
      notes.push_back(fmt::format(
          "experts without --expert-parallel: each expert's moe dim is split over all {} = dp {} "
          "x tp {} ranks of a replica, as vLLM's FusedMoE flattens TP across DP",
          size(i, "dp") * size(i, "tp"), size(i, "dp"), size(i, "tp")));
    if (m.mtp_layers)
      notes.push_back(
          fmt::format("the {} multi-token-prediction layer(s) after layer {} are not "
                      "part of the specs",
                      m.mtp_layers, m.layers - 1));
  }
};

json mesh_axes(const std::map<std::string, int64_t>& axes,
               std::initializer_list<const char*> order) {
  json out = json::array();
  for (const char* n : order)
    if (axes.count(n)) out.push_back({{"name", n}, {"size", axes.at(n)}});
  return out;
}

std::map<std::string, int64_t> axis_map(const std::vector<Axis>& axes,
                                        std::initializer_list<const char*> allowed,
                                        const char* option) {
  std::map<std::string, int64_t> out;
  for (const Axis& a : axes) {
    if (std::find_if(allowed.begin(), allowed.end(), [&](const char* n) { return a.name == n; }) ==
        allowed.end()) {
      std::string names;
      for (const char* n : allowed) names += (names.empty() ? "" : ", ") + std::string(n);
      fail(option, fmt::format("unknown axis '{}' (expected {})", a.name, names));
    }
    if (a.size < 1 || a.size > (1 << 20))
      fail(option, fmt::format("axis '{}' of size {}", a.name, a.size));
    if (!out.emplace(a.name, a.size).second)
      fail(option, fmt::format("axis '{}' given twice", a.name));
  }
  return out;
}

}  // namespace

Result<GeneratedSpecs> generate_specs(const json& hf_config, const GenerateOptions& o) {
  try {
    const HfModel m = read_hf_config(hf_config);
    Gen g{m, o};
    g.t = axis_map(o.trainer, {"pp", "dp", "ep", "fsdp", "tp"}, "--trainer");
    g.i = axis_map(o.inference, {"dp", "tp"}, "--inference");
    if (g.t.empty()) g.t["fsdp"] = 1;
    g.i.emplace("tp", 1);
    if (g.t.count("ep") && !m.experts) fail("--trainer", "ep: the model has no experts");
    if (o.expert_parallel && !m.experts) fail("--expert-parallel", "the model has no experts");
    const int64_t ranks = Gen::size(g.i, "dp") * Gen::size(g.i, "tp");
    const int64_t tep = Gen::size(g.t, "ep");
    if (m.experts && m.experts % tep)
      fail("--trainer", fmt::format("ep={} does not divide {} experts", tep, m.experts));
    if (o.expert_parallel && m.experts % ranks && o.trainer_experts == "hf4")
      fail("--expert-parallel",
           fmt::format("{} ranks per replica do not divide {} experts, and transformers 4's "
                       "per-expert weights are stacked whole (use --trainer-experts titan or hf)",
                       ranks, m.experts));
    const int64_t itp = Gen::size(g.i, "tp");
    if (m.heads % itp)
      fail("--inference", fmt::format("tp={} does not divide {} attention heads", itp, m.heads));
    if (!m.mla && m.kv_heads % itp && itp % m.kv_heads)
      fail("--inference",
           fmt::format("tp={} and {} kv heads: one must divide the other (vLLM)", itp, m.kv_heads));
    if (Gen::size(g.t, "pp") > m.layers)
      fail("--trainer", fmt::format("pp={} exceeds {} layers", Gen::size(g.t, "pp"), m.layers));
    if (o.dense_shard != "all" && o.dense_shard != "fsdp")
      fail("--dense-shard", fmt::format("'{}' (expected all or fsdp)", o.dense_shard));
    if (o.trainer_experts != "titan" && o.trainer_experts != "hf" && o.trainer_experts != "hf4")
      fail("--trainer-experts", fmt::format("'{}' (expected titan, hf or hf4)", o.trainer_experts));
    if (o.trainer_experts == "hf4" && m.experts && Gen::size(g.t, "tp") > 1)
      fail("--trainer-experts",
           "hf4: a tensor-parallel trainer of per-expert weights is not modelled");
    if (o.trainer_experts == "hf" && m.experts && !o.expert_parallel)
      fail("--trainer-experts",
           "hf: transformers' fused gate_up_proj cannot be split into vLLM's tensor-parallel "
           "w13 (gate rows then up rows per rank); use --expert-parallel, or titan");
    if (o.trainer_experts == "hf" && m.experts && Gen::size(g.t, "tp") > 1)
      fail("--trainer-experts",
           "hf: a tensor-parallel trainer's fused gate_up_proj is not modelled");
    if (o.engine != "vllm" && o.engine != "sglang")
      fail("--engine", fmt::format("'{}' (expected vllm or sglang)", o.engine));
    if (o.fp8 == "auto") {
      g.fp8_linear = g.fp8_experts = m.fp8_checkpoint;
    } else if (o.fp8 == "all") {
      g.fp8_linear = g.fp8_experts = true;
    } else if (o.fp8 == "experts") {
      g.fp8_experts = true;
      if (!m.experts) fail("--fp8", "experts: the model has no experts");
    } else if (o.fp8 != "none") {
      fail("--fp8", fmt::format("'{}' (expected auto, none, experts or all)", o.fp8));
    }
    g.model();
    if (o.fp8 == "auto" && !m.fp8_skip.empty()) g.apply_fp8_skips();
    GeneratedSpecs out;
    const std::string name = o.model_name.empty() ? m.type : o.model_name;
    const int64_t tranks = [&] {
      int64_t n = 1;
      for (const auto& [k, v] : g.t) n *= v;
      return n;
    }();
    const int gph = o.gpus_per_host;
    out.trainer = {{"format", "weightcast.spec/v1"},
                   {"role", "trainer"},
                   {"model", name},
                   {"dims", g.dims},
                   {"mesh",
                    {{"axes", mesh_axes(g.t, {"pp", "dp", "ep", "fsdp", "tp"})},
                     {"devices", {{"host", o.trainer_host}, {"gpus_per_host", gph}}}}},
                   {"params", g.tparams}};
    std::string layout =
        fmt::format("{} layout, TP{}", o.engine == "sglang" ? "SGLang" : "vLLM", itp);
    if (g.i.count("dp")) layout += fmt::format(" x DP{} attention", Gen::size(g.i, "dp"));
    if (m.experts)
      layout += o.expert_parallel                ? fmt::format(", experts EP{}", ranks)
                : g.i.count("dp") && ranks > itp ? fmt::format(", experts TP{} (dp x tp)", ranks)
                                                 : ", experts TP";
    if (g.fp8_linear || g.fp8_experts)
      layout += g.fp8_linear ? ", FP8 128x128 weights" : ", FP8 128x128 experts";
    out.inference = {{"format", "weightcast.spec/v1"},
                     {"role", "inference"},
                     {"model", name + " (" + layout + ")"},
                     {"dims", g.dims},
                     {"replicas",
                      {{"count", o.replicas},
                       {"mesh", {{"axes", mesh_axes(g.i, {"dp", "tp"})}}},
                       {"devices", {{"host", o.inference_host}, {"gpus_per_host", gph}}}}},
                     {"params", g.iparams}};
    if (!o.single_host.empty()) {
      // One machine: trainer ranks on its first GPUs, inference ranks after them (or on the
      // same GPUs when colocated, verl's hybrid engine).
      const int64_t first = o.colocated ? 0 : tranks;
      if (first + o.replicas * ranks > gph || tranks > gph)
        fail("--single-host",
             fmt::format("{} trainer and {} inference ranks do not fit {} GPUs "
                         "(--gpus-per-host){}",
                         tranks, o.replicas * ranks, gph, o.colocated ? " even colocated" : ""));
      out.trainer["mesh"]["devices"] = {{"host", o.single_host}, {"gpus_per_host", gph}};
      out.inference["replicas"]["devices"] = {
          {"host", o.single_host}, {"gpus_per_host", gph}, {"first_gpu", first}};
      json host = {{"name", o.single_host},
                   {"gpus", gph},
                   {"nics_per_gpu", o.nics_per_gpu},
                   {"nic_gbps", o.nic_gbps},
                   {"nvlink_gbps", 3600.0}};
      if (o.gather_us > 0) host["gather_us"] = o.gather_us;
      if (o.colocated) host["colocated"] = true;
      out.topology = {{"format", "weightcast.topology/v1"},
                      {"name", fmt::format("one machine ({}), {} GPU slots", o.single_host, gph)},
                      {"hosts", json::array({host})}};
      out.notes = std::move(g.notes);
      return out;
    }
    if (o.colocated) fail("--colocated", "needs --single-host");
    const int64_t thosts = (tranks + gph - 1) / gph, ihosts = (o.replicas * ranks + gph - 1) / gph;
    auto hosts = [&](const std::string& tmpl, int64_t n) {
      json h{{"name", tmpl},
             {"for", {{"h", {0, n}}}},
             {"gpus", gph},
             {"nics_per_gpu", o.nics_per_gpu},
             {"nic_gbps", o.nic_gbps},
             {"nvlink_gbps", 3600.0}};
      if (o.gather_us > 0) h["gather_us"] = o.gather_us;
      return h;
    };
    out.topology = {
        {"format", "weightcast.topology/v1"},
        {"name", fmt::format("{} trainer host(s), {} inference host(s), {} GPUs and "
                             "{}x{:g}G NICs each",
                             thosts, ihosts, gph, gph * o.nics_per_gpu, o.nic_gbps)},
        {"hosts", json::array({hosts(o.trainer_host, thosts), hosts(o.inference_host, ihosts)})}};
    out.notes = std::move(g.notes);
    return out;
  } catch (const SpecError& e) {
    return Status(Code::kInvalidArgument, e.what());
  } catch (const json::exception& e) {
    return Status(Code::kInvalidArgument, fmt::format("config.json: {}", e.what()));
  }
}

Result<GenerateOptions> parse_generate_args(const std::vector<std::string>& args) {
  GenerateOptions o;
  auto axes = [](const std::string& opt, const std::string& text) {
    std::vector<Axis> out;
    size_t at = 0;
    while (at <= text.size()) {
      const size_t comma = std::min(text.find(',', at), text.size());
      const std::string item = text.substr(at, comma - at);
      const size_t eq = item.find('=');
      const std::string n = eq == std::string::npos ? "" : item.substr(eq + 1);
      if (eq == std::string::npos || n.empty() || n.size() > 7 ||
          n.find_first_not_of("0123456789") != std::string::npos)
        fail(opt, fmt::format("'{}': expected axis=size, e.g. fsdp=8,ep=4", item));
      out.push_back({item.substr(0, eq), std::stoll(n)});
      at = comma + 1;
    }
    return out;
  };
  auto number = [](const std::string& opt, const std::string& v, double lo, double hi) {
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end || d < lo || d > hi)
      fail(opt, fmt::format("'{}': expected a number in [{:g}, {:g}]", v, lo, hi));
    return d;
  };
  try {
    for (size_t k = 0; k < args.size(); ++k) {
      const std::string& a = args[k];
      if (a == "--expert-parallel" || a == "--colocated") {
        (a == "--colocated" ? o.colocated : o.expert_parallel) = true;
        continue;
      }
      if (k + 1 >= args.size()) fail(a, "expects a value");
      const std::string& v = args[++k];
      if (a == "--trainer")
        o.trainer = axes(a, v);
      else if (a == "--inference")
        o.inference = axes(a, v);
      else if (a == "--replicas")
        o.replicas = static_cast<int64_t>(number(a, v, 1, 4096));
      else if (a == "--fp8")
        o.fp8 = v;
      else if (a == "--gpus-per-host")
        o.gpus_per_host = static_cast<int>(number(a, v, 1, 1024));
      else if (a == "--nics-per-gpu")
        o.nics_per_gpu = static_cast<int>(number(a, v, 1, 16));
      else if (a == "--nic-gbps")
        o.nic_gbps = number(a, v, 1, 1e6);
      else if (a == "--single-host")
        o.single_host = v;
      else if (a == "--gather-us")
        o.gather_us = number(a, v, 0, 1e9);
      else if (a == "--dense-shard")
        o.dense_shard = v;
      else if (a == "--trainer-experts")
        o.trainer_experts = v;
      else if (a == "--engine")
        o.engine = v;
      else if (a == "--name")
        o.model_name = v;
      else if (a == "--trainer-host")
        o.trainer_host = v;
      else if (a == "--inference-host")
        o.inference_host = v;
      else
        fail(a, "unknown option (see weightcast spec --help)");
    }
  } catch (const SpecError& e) {
    return Status(Code::kInvalidArgument, e.what());
  }
  return o;
}

}  // namespace weightcast::spec
