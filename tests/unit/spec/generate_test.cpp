// `weightcast spec`: the shipped configs are what the generator makes of their config.json and
// spec.args (golden), and per model type the generated inference layout follows vLLM's rules
// (kv heads replicated past TP, vocab padding, fused sizes, FP8 scales), plans and verifies.
#include "weightcast/spec/generate.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::spec {
namespace {

using nlohmann::json;

json load(const std::string& path) {
  auto j = load_json_file(path);
  EXPECT_TRUE(j) << j.status().message();
  return j ? *j : json();
}

std::vector<std::string> words(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> out;
  for (std::string w; f >> w;) out.push_back(w);
  return out;
}

class ShippedConfig : public ::testing::TestWithParam<const char*> {};

TEST_P(ShippedConfig, IsWhatTheGeneratorWrites) {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + GetParam() + "/";
  auto opts = parse_generate_args(words(dir + "spec.args"));
  ASSERT_TRUE(opts) << opts.status().message();
  auto g = generate_specs(load(dir + "config.json"), *opts);
  ASSERT_TRUE(g) << g.status().message();
  // Regenerate with: weightcast spec --no-plan --config DIR/config.json -o DIR $(cat DIR/spec.args)
  EXPECT_EQ(g->trainer, load(dir + "trainer.json")) << dir << "trainer.json is stale";
  EXPECT_EQ(g->inference, load(dir + "inference.json")) << dir << "inference.json is stale";
  EXPECT_EQ(g->topology, load(dir + "topology.json")) << dir << "topology.json is stale";
}

INSTANTIATE_TEST_SUITE_P(Configs, ShippedConfig,
                         ::testing::Values("demo-moe", "llama-3.1-8b", "qwen3-30b-a3b",
                                           "deepseek-v3", "kimi-k2"),
                         [](const auto& p) {
                           std::string n = p.param;
                           for (char& c : n)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// Small configs of each model type (the numbers keep 128-blocks whole where FP8 is asked).
json small(const std::string& type) {
  json c = {{"model_type", type}, {"hidden_size", 256},       {"num_hidden_layers", 3},
            {"vocab_size", 1000}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
            {"head_dim", 128},    {"intermediate_size", 512}, {"tie_word_embeddings", false}};
  if (type == "qwen3_moe")
    c.update({{"num_experts", 8}, {"moe_intermediate_size", 256}, {"mlp_only_layers", {0}}});
  if (type == "mixtral") c["num_local_experts"] = 4;
  if (type == "glm4_moe" || type == "deepseek_v3")
    c.update({{"n_routed_experts", 8},
              {"moe_intermediate_size", 256},
              {"n_shared_experts", 1},
              {"first_k_dense_replace", 1},
              {"attention_bias", true}});
  if (type == "deepseek_v3")
    c.update({{"q_lora_rank", 256},
              {"kv_lora_rank", 128},
              {"qk_nope_head_dim", 128},
              {"qk_rope_head_dim", 64},
              {"v_head_dim", 128}});
  return c;
}

struct Generated {
  GeneratedSpecs g;
  Inputs in;
};

Generated make_specs(const json& config, const std::vector<std::string>& args, int64_t scale = 1) {
  auto opts = parse_generate_args(args);
  EXPECT_TRUE(opts) << opts.status().message();
  auto g = generate_specs(config, *opts);
  EXPECT_TRUE(g) << g.status().message();
  if (!g) return {};
  auto in = make_inputs(g->trainer, g->inference, g->topology, {scale}, {"T", "I", "C"});
  EXPECT_TRUE(in) << in.status().message();
  if (!in) return {};
  return {*g, *in};
}

void verifies(const Inputs& in) {
  auto p = plan::make_plan(in, {});
  ASSERT_TRUE(p) << p.status().message();
  auto v = plan::verify_plan(in, *p);
  ASSERT_TRUE(v) << v.status().message();
  EXPECT_GT(v->bytes_checked, 0u);
}

const DestParam& dest(const Inputs& in, const std::string& name) {
  auto it = in.inference.index.find(name);
  if (it == in.inference.index.end()) throw std::runtime_error("no inference tensor " + name);
  return in.inference.params[static_cast<size_t>(it->second)];
}

std::string local_shape(const Inputs& in, const std::string& name, int64_t rank) {
  auto dl = dest_local(dest(in, name), in.inference.replicas[0], rank);
  return dl ? dl->shape.str() : "none";
}

TEST(Generate, LlamaTp8OverTwoKvHeadsReplicatesThem) {
  auto [g, in] = make_specs(small("llama"), {"--trainer", "fsdp=4", "--inference", "tp=8"});
  // 8 q heads: one per rank; 2 kv heads over 8 ranks: each rank holds its group's kv head.
  EXPECT_EQ(local_shape(in, "model.layers.0.self_attn.qkv_proj.weight", 5), "[384, 256]");
  auto dl =
      dest_local(dest(in, "model.layers.0.self_attn.qkv_proj.weight"), in.inference.replicas[0], 5);
  EXPECT_EQ(dl->parts[1].global.str(), "[128:256, 0:256]");  // kv head 5 / 4 = 1
  EXPECT_EQ(local_shape(in, "model.layers.0.mlp.gate_up_proj.weight", 0), "[128, 256]");
  EXPECT_EQ(local_shape(in, "model.layers.0.mlp.down_proj.weight", 0), "[256, 64]");
  // vocab 1000 padded to 1024: 128 rows a rank, the last holding 104 rows and 24 of padding.
  EXPECT_EQ(local_shape(in, "model.embed_tokens.weight", 7), "[128, 256]");
  EXPECT_EQ(dest(in, "lm_head.weight").pad_dims, std::vector<int>{0});
  ASSERT_EQ(g.notes.size(), 2u);
  EXPECT_NE(g.notes[0].find("vocab 1000 padded to 1024"), std::string::npos);
  EXPECT_NE(g.notes[1].find("each kv head is replicated on 4 ranks"), std::string::npos);
  verifies(in);
}

TEST(Generate, Qwen2BiasesQwen3NormsMistralAndTiedEmbeddings) {
  auto [g2, q2] = make_specs(small("qwen2"), {"--inference", "tp=2"});
  EXPECT_EQ(local_shape(q2, "model.layers.2.self_attn.qkv_proj.bias", 1), "[768]");
  verifies(q2);
  json c = small("qwen3");
  c["tie_word_embeddings"] = true;
  auto [g3, q3] =
      make_specs(c, {"--trainer", "dp=2,fsdp=2", "--inference", "tp=2", "--replicas", "2"});
  EXPECT_EQ(local_shape(q3, "model.layers.1.self_attn.k_norm.weight", 1), "[128]");
  EXPECT_EQ(q3.trainer.index.count("lm_head.weight"), 0u);
  EXPECT_EQ(q3.inference.index.count("lm_head.weight"), 0u);
  verifies(q3);
  auto [gm, mi] = make_specs(small("mistral"), {"--trainer", "fsdp=2,tp=2", "--inference", "tp=4"});
  // FSDP2 over TP on the trainer: column weights _StridedShard on dim 0.
  const Param& q = mi.trainer.params[static_cast<size_t>(
      mi.trainer.index.at("model.layers.0.self_attn.q_proj.weight"))];
  EXPECT_EQ(q.placement.at("fsdp").str(), "SS(0,2)");
  verifies(mi);
}

TEST(Generate, MoeModelsStackExpertsAsFusedMoeDoes) {
  // Qwen3-MoE, layer 0 dense (mlp_only_layers), EP over dp x tp, FP8 experts.
  auto [g, in] =
      make_specs(small("qwen3_moe"), {"--trainer", "ep=2,fsdp=2", "--inference", "dp=2,tp=2",
                                      "--expert-parallel", "--fp8", "experts"});
  EXPECT_EQ(in.inference.index.count("model.layers.0.mlp.gate_up_proj.weight"), 1u);
  EXPECT_EQ(local_shape(in, "model.layers.1.mlp.experts.w13_weight", 3), "[2, 512, 256]");
  const DestParam& w13 = dest(in, "model.layers.1.mlp.experts.w13_weight");
  ASSERT_TRUE(w13.quant);
  EXPECT_EQ(w13.quant->scale_name, "model.layers.1.mlp.experts.w13_weight_scale_inv");
  const auto w13_local = dest_local(w13, in.inference.replicas[0], 3);
  EXPECT_EQ(scale_shape(w13_local->shape, *w13.quant).str(), "[2, 4, 2]");
  verifies(in);
  // transformers 5's fused experts map straight onto w13 under EP, and are refused under TP.
  auto [gh, hf] = make_specs(
      small("qwen3_moe"), {"--inference", "dp=2", "--expert-parallel", "--trainer-experts", "hf"});
  EXPECT_EQ(dest(hf, "model.layers.1.mlp.experts.w13_weight").parts.size(), 1u);
  EXPECT_EQ(hf.trainer.index.count("model.layers.1.mlp.experts.gate_up_proj"), 1u);
  verifies(hf);
  auto refused =
      generate_specs(small("qwen3_moe"), *parse_generate_args({"--trainer-experts", "hf"}));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find("use --expert-parallel"), std::string::npos);
  // transformers 4's experts one by one: stacked whole over EP, each split over TP; the engine
  // sees FusedMoE's [E, 2*moe, hidden] either way.
  auto [g4, ep4] = make_specs(
      small("qwen3_moe"), {"--trainer", "ep=2,fsdp=2", "--inference", "dp=2", "--expert-parallel",
                           "--trainer-experts", "hf4", "--fp8", "experts"});
  const DestParam& s13 = dest(ep4, "model.layers.1.mlp.experts.w13_weight");
  const auto l13 = dest_local(s13, ep4.inference.replicas[0], 1);
  EXPECT_EQ(view_shape(s13, l13->shape, false).str(), "[4, 512, 256]");
  EXPECT_EQ(view_shape(s13, scale_shape(l13->shape, *s13.quant), true).str(), "[4, 4, 2]");
  EXPECT_EQ(ep4.trainer
                .params[static_cast<size_t>(
                    ep4.trainer.index.at("model.layers.1.mlp.experts.5.up_proj.weight"))]
                .placement.at("ep")
                .str(),
            "O(1)");
  verifies(ep4);
  // transformers 5 saves a Qwen3-MoE config with num_local_experts instead of num_experts.
  json v5 = small("qwen3_moe");
  v5.erase("num_experts");
  v5["num_local_experts"] = 8;
  auto [g6, from_v5] = make_specs(v5, {"--inference", "dp=2", "--expert-parallel"});
  EXPECT_EQ(local_shape(from_v5, "model.layers.1.mlp.experts.w13_weight", 1), "[4, 512, 256]");
  v5.erase("num_local_experts");
  auto none = generate_specs(v5, *parse_generate_args({}));
  ASSERT_FALSE(none);
  EXPECT_EQ(none.status().message(), "config.json.num_experts: missing (this model_type needs it)");
  auto [g5, tp4] =
      make_specs(small("qwen3_moe"), {"--inference", "tp=2", "--trainer-experts", "hf4"});
  const DestParam& t2 = dest(tp4, "model.layers.1.mlp.experts.w2_weight");
  EXPECT_EQ(view_shape(t2, dest_local(t2, tp4.inference.replicas[0], 0)->shape, false).str(),
            "[8, 256, 128]");
  verifies(tp4);
  // Mixtral, experts tensor-parallel: w13 [E, 2*moe/tp, hidden], w2 [E, hidden, moe/tp].
  auto [gx, mx] = make_specs(small("mixtral"), {"--inference", "tp=2"});
  EXPECT_EQ(local_shape(mx, "model.layers.0.block_sparse_moe.experts.w13_weight", 1),
            "[4, 512, 256]");
  EXPECT_EQ(local_shape(mx, "model.layers.0.block_sparse_moe.experts.w2_weight", 1),
            "[4, 256, 256]");
  EXPECT_EQ(mx.inference.index.count("model.layers.0.block_sparse_moe.gate.weight"), 1u);
  verifies(mx);
  // GLM-4.5 style: shared experts, the router's correction bias in fp32, qkv bias.
  auto [gg, gl] =
      make_specs(small("glm4_moe"), {"--trainer", "pp=3", "--inference", "tp=2", "--fp8", "all"});
  EXPECT_EQ(dest(gl, "model.layers.1.mlp.gate.e_score_correction_bias").dtype, core::DType::kFP32);
  EXPECT_EQ(local_shape(gl, "model.layers.1.mlp.shared_experts.gate_up_proj.weight", 0),
            "[256, 256]");
  verifies(gl);
}

TEST(Generate, ExpertsWithoutEpAreSplitOverEveryRankAsVllmFlattensTpAcrossDp) {
  // dp > 1 without EP: vLLM flattens TP across DP for FusedMoE, so the moe dim is split over
  // all dp x tp ranks (Qwen3-30B-A3B dp=2, tp=4: w13 [128, 192, 2048], not [128, 384, 2048]);
  // rank (d, t) holds chunk d * tp + t, gate rows then up rows. Dense weights stay per tp.
  for (const char* experts : {"titan", "hf4"}) {
    auto [gd, dp2] =
        make_specs(small("qwen3_moe"), {"--inference", "dp=2,tp=2", "--trainer-experts", experts});
    const DestParam& w13 = dest(dp2, "model.layers.1.mlp.experts.w13_weight");
    const DestParam& w2 = dest(dp2, "model.layers.1.mlp.experts.w2_weight");
    for (int64_t rank = 0; rank < 4; ++rank) {
      const auto l13 = dest_local(w13, dp2.inference.replicas[0], rank);
      const auto l2 = dest_local(w2, dp2.inference.replicas[0], rank);
      EXPECT_EQ(view_shape(w13, l13->shape, false).str(), "[8, 128, 256]") << experts << rank;
      EXPECT_EQ(view_shape(w2, l2->shape, false).str(), "[8, 256, 64]") << experts << rank;
    }
    // Rank 2 = (dp 1, tp 0): chunk 2 of 4 of every expert's moe rows.
    const auto l13 = dest_local(w13, dp2.inference.replicas[0], 2);
    ASSERT_FALSE(l13->parts.empty());
    EXPECT_NE(l13->parts[0].global.str().find("128:192"), std::string::npos)
        << experts << " " << l13->parts[0].global.str();
    EXPECT_EQ(local_shape(dp2, "model.layers.0.mlp.gate_up_proj.weight", 2), "[512, 256]");
    EXPECT_NE(gd.notes.back().find("split over all 4 = dp 2 x tp 2 ranks"), std::string::npos)
        << gd.notes.back();
    verifies(dp2);
  }
}

TEST(Generate, DeepSeekSharedExpertsAreWholeUnderSequenceParallelMoe) {
  // vLLM with EP, dp > 1 and tp > 1 runs DeepseekV2MoE sequence-parallel: the shared experts'
  // gate_up_proj / down_proj are built with disable_tp, whole on every rank.
  auto [g, in] =
      make_specs(small("deepseek_v3"), {"--trainer", "ep=2,fsdp=2", "--inference", "dp=2,tp=2",
                                        "--expert-parallel", "--fp8", "none"});
  for (int64_t rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(local_shape(in, "model.layers.1.mlp.shared_experts.gate_up_proj.weight", rank),
              "[512, 256]");
    EXPECT_EQ(local_shape(in, "model.layers.1.mlp.shared_experts.down_proj.weight", rank),
              "[256, 256]");
  }
  // The dense layer's MLP is plain TP still.
  EXPECT_EQ(local_shape(in, "model.layers.0.mlp.gate_up_proj.weight", 3), "[512, 256]");
  EXPECT_EQ(local_shape(in, "model.layers.0.mlp.down_proj.weight", 3), "[256, 256]");
  bool noted = false;
  for (const std::string& n : g.notes) noted = noted || n.find("disable_tp") != std::string::npos;
  EXPECT_TRUE(noted);
  verifies(in);
  // Without DP (or without EP, or on SGLang, or GLM-4.5) they are split over tp as before.
  for (const auto& [type, args] : std::vector<std::pair<const char*, std::vector<std::string>>>{
           {"deepseek_v3", {"--inference", "tp=2", "--expert-parallel", "--fp8", "none"}},
           {"deepseek_v3", {"--inference", "dp=2,tp=2", "--fp8", "none"}},
           {"deepseek_v3",
            {"--inference", "dp=2,tp=2", "--expert-parallel", "--engine", "sglang", "--fp8",
             "none"}},
           {"glm4_moe", {"--inference", "dp=2,tp=2", "--expert-parallel"}}}) {
    auto [g2, split] = make_specs(small(type), args);
    EXPECT_EQ(local_shape(split, "model.layers.1.mlp.shared_experts.gate_up_proj.weight", 1),
              "[256, 256]")
        << type << " " << args[1];
  }
}

TEST(Generate, Glm45RoutersAreFp32AsTheEnginesBuildThem) {
  auto [g, in] = make_specs(small("glm4_moe"), {"--inference", "tp=2"});
  EXPECT_EQ(dest(in, "model.layers.1.mlp.gate.weight").dtype, core::DType::kFP32);
  const Param& tg =
      in.trainer.params[static_cast<size_t>(in.trainer.index.at("model.layers.1.mlp.gate.weight"))];
  EXPECT_EQ(tg.dtype, core::DType::kBF16);  // the trainer's bf16 router, cast on the way
  verifies(in);
  // Other MoE routers stay in the model's dtype.
  auto [gq, qw] = make_specs(small("qwen3_moe"), {"--inference", "tp=2"});
  EXPECT_EQ(dest(qw, "model.layers.1.mlp.gate.weight").dtype, core::DType::kBF16);
  auto [gs, sg] = make_specs(small("glm4_moe"), {"--inference", "tp=2", "--engine", "sglang"});
  bool warned = false;
  for (const std::string& n : gs.notes) warned = warned || n.find("#35883") != std::string::npos;
  EXPECT_TRUE(warned);
}

TEST(Generate, ModulesTheCheckpointLeavesUnquantizedStayBf16AsVllmLoadsThem) {
  json c = small("deepseek_v3");
  c["quantization_config"] = {
      {"quant_method", "fp8"},
      {"weight_block_size", {128, 128}},
      {"modules_to_not_convert",
       {"lm_head", "model.layers.1.self_attn.q_b_proj", "model.layers.2.self_attn.q_a_proj",
        "model.layers.2.self_attn.kv_a_proj_with_mqa", "model.layers.2.mlp.experts.3.up_proj",
        "model.layers.1.mlp.shared_experts.gate_proj",
        "model.layers.1.mlp.shared_experts.up_proj"}}};
  const Generated made =
      make_specs(c, {"--trainer", "ep=2,fsdp=2", "--inference", "tp=2", "--expert-parallel"});
  const GeneratedSpecs& g = made.g;
  const Inputs& in = made.in;  // (not a structured binding: the lambda uses it)
  auto fp8 = [&](const std::string& name) {
    const DestParam& d = dest(in, name);
    EXPECT_EQ(d.dtype == core::DType::kFP8E4M3, d.quant.has_value()) << name;
    return d.quant.has_value();
  };
  EXPECT_FALSE(fp8("model.layers.1.self_attn.q_b_proj.weight"));  // named exactly
  EXPECT_TRUE(fp8("model.layers.0.self_attn.q_b_proj.weight"));
  EXPECT_TRUE(fp8("model.layers.2.self_attn.q_b_proj.weight"));
  EXPECT_FALSE(fp8("model.layers.2.self_attn.fused_qkv_a_proj.weight"));  // both parts named
  EXPECT_TRUE(fp8("model.layers.1.self_attn.fused_qkv_a_proj.weight"));
  EXPECT_FALSE(fp8("model.layers.2.mlp.experts.w13_weight"));  // one expert named: the layer's
  EXPECT_FALSE(fp8("model.layers.2.mlp.experts.w2_weight"));
  EXPECT_TRUE(fp8("model.layers.1.mlp.experts.w13_weight"));
  EXPECT_FALSE(fp8("model.layers.1.mlp.shared_experts.gate_up_proj.weight"));
  EXPECT_TRUE(fp8("model.layers.2.mlp.shared_experts.gate_up_proj.weight"));
  EXPECT_EQ(dest(in, "model.layers.1.self_attn.q_b_proj.weight").dtype, core::DType::kBF16);
  bool noted = false;
  for (const std::string& n : g.notes)
    noted = noted || n.find("leaves 7 module(s) unquantized") != std::string::npos;
  EXPECT_TRUE(noted);
  verifies(in);
  // ignored_layers wins over modules_to_not_convert, as in vLLM's Fp8Config.
  c["quantization_config"]["ignored_layers"] = {"model.layers.0.self_attn.o_proj"};
  auto [g2, in2] =
      make_specs(c, {"--trainer", "ep=2,fsdp=2", "--inference", "tp=2", "--expert-parallel"});
  EXPECT_FALSE(dest(in2, "model.layers.0.self_attn.o_proj.weight").quant);
  EXPECT_TRUE(dest(in2, "model.layers.1.self_attn.q_b_proj.weight").quant);
  // Half of a fused module is refused, naming it.
  c["quantization_config"]["ignored_layers"] = {"model.layers.1.self_attn.q_a_proj"};
  auto half = generate_specs(c, *parse_generate_args({"--inference", "tp=2"}));
  ASSERT_FALSE(half);
  EXPECT_EQ(half.status().message(),
            "config.json.quantization_config: 'model.layers.1.self_attn.' leaves q_a_proj "
            "unquantized but not the rest of fused model.layers.1.self_attn.fused_qkv_a_proj "
            "(q_a_proj, kv_a_proj_with_mqa); vLLM refuses such a checkpoint too");
  c["quantization_config"]["ignored_layers"] = "lm_head";
  auto bad = generate_specs(c, *parse_generate_args({}));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("quantization_config.ignored_layers"), std::string::npos)
      << bad.status().message();
}

TEST(Generate, ExpertsTheEpRanksDoNotDivideGoFirstRanksFirstAsVllmPlacesThem) {
  // 8 experts over dp=3 x tp=2 = 6 EP ranks: vLLM's linear placement gives ranks 0 and 1 two
  // experts (0-1, 2-3) and ranks 2..5 one each (4, 5, 6, 7), flattened over dp x tp.
  auto [g, in] = make_specs(small("qwen3_moe"), {"--trainer", "ep=2,fsdp=2", "--inference",
                                                 "dp=3,tp=2", "--expert-parallel"});
  const DestParam& w13 = dest(in, "model.layers.1.mlp.experts.w13_weight");
  const std::vector<std::string> want{"[0:2", "[2:4", "[4:5", "[5:6", "[6:7", "[7:8"};
  for (int64_t rank = 0; rank < 6; ++rank) {
    auto l = dest_local(w13, in.inference.replicas[0], rank);
    ASSERT_TRUE(l);
    EXPECT_EQ(l->parts[0].global.str().rfind(want[static_cast<size_t>(rank)], 0), 0u)
        << rank << " " << l->parts[0].global.str();
  }
  EXPECT_EQ(w13.placement.at("dp").str(), "E(0)");
  bool noted = false;
  for (const std::string& n : g.notes)
    noted = noted || n.find(
                         "8 experts over 6 EP ranks: ranks 0..1 hold 2 experts, the others "
                         "1") != std::string::npos;
  EXPECT_TRUE(noted);
  verifies(in);
  // Ranks that divide the experts keep S(0).
  auto [g2, even] =
      make_specs(small("qwen3_moe"), {"--inference", "dp=2,tp=2", "--expert-parallel"});
  EXPECT_EQ(dest(even, "model.layers.1.mlp.experts.w13_weight").placement.at("tp").str(), "S(0)");
}

TEST(Generate, MlaFusesTheLowRankProjections) {
  auto [g, in] = make_specs(
      small("deepseek_v3"),
      {"--trainer", "ep=2,fsdp=2", "--inference", "tp=2", "--expert-parallel", "--fp8", "all"}, 2);
  // fused_qkv_a_proj: q_lora + kv_lora + rope rows, replicated (vLLM's disable_tp); --scale 2.
  EXPECT_EQ(local_shape(in, "model.layers.0.self_attn.fused_qkv_a_proj.weight", 1), "[224, 128]");
  EXPECT_EQ(local_shape(in, "model.layers.0.self_attn.q_b_proj.weight", 1), "[384, 128]");
  EXPECT_EQ(local_shape(in, "model.layers.0.self_attn.o_proj.weight", 1), "[128, 256]");
  EXPECT_TRUE(dest(in, "model.layers.0.self_attn.kv_b_proj.weight").quant);
  verifies(in);
  auto [gs, sg] = make_specs(small("deepseek_v3"), {"--engine", "sglang"});
  EXPECT_EQ(sg.inference.index.count("model.layers.0.self_attn.fused_qkv_a_proj_with_mqa.weight"),
            1u);
  EXPECT_NE(gs.inference["model"].get<std::string>().find("SGLang layout"), std::string::npos);
  // The note names the engine the specs are for.
  auto mla_note = [](const GeneratedSpecs& s) {
    for (const std::string& n : s.notes)
      if (n.rfind("MLA:", 0) == 0) return n;
    return std::string();
  };
  EXPECT_NE(mla_note(gs).find("SGLang derives w_kc / w_vc"), std::string::npos) << mla_note(gs);
  EXPECT_NE(mla_note(g).find("vLLM derives W_UK / W_UV"), std::string::npos) << mla_note(g);
}

TEST(Generate, BadConfigsAndOptionsAreNamed) {
  auto error = [](json c, const std::vector<std::string>& args) {
    auto opts = parse_generate_args(args);
    if (!opts) return opts.status().message();
    auto g = generate_specs(c, *opts);
    return g ? std::string("ok") : g.status().message();
  };
  json c = small("llama");
  c.erase("hidden_size");
  EXPECT_EQ(error(c, {}), "config.json.hidden_size: missing (this model_type needs it)");
  c = small("llama");
  c["model_type"] = "gpt2";
  EXPECT_NE(error(c, {}).find("config.json.model_type: 'gpt2' is not supported"),
            std::string::npos);
  EXPECT_EQ(error(small("llama"), {"--inference", "tp=3"}),
            "--inference: tp=3 does not divide 8 attention heads");
  EXPECT_EQ(error(small("llama"), {"--inference", "tp=8", "--fp8", "all"}),
            "--fp8: 'model.layers.{i}.mlp.gate_up_proj.weight': 64 rows of "
            "model.layers.{i}.mlp.gate_proj.weight per rank are not whole 128-blocks, which "
            "vLLM's block-FP8 weights need (use --fp8 experts or none, or another inference TP)");
  // Experts that do not fit the blocks: the hint does not suggest --fp8 experts, which was given.
  EXPECT_EQ(error(small("qwen3_moe"), {"--inference", "tp=4", "--fp8", "experts"}),
            "--fp8: 'model.layers.{i}.mlp.experts.w13_weight': 64 rows of "
            "model.layers.{i}.mlp.experts.w1 per rank are not whole 128-blocks, which "
            "vLLM's block-FP8 weights need (use --fp8 none, --expert-parallel, or another "
            "inference TP)");
  EXPECT_EQ(error(small("llama"), {"--trainer", "zp=2"}),
            "--trainer: unknown axis 'zp' (expected pp, dp, ep, fsdp, tp)");
  EXPECT_EQ(error(small("llama"), {"--trainer", "fsdp"}),
            "--trainer: 'fsdp': expected axis=size, e.g. fsdp=8,ep=4");
  EXPECT_EQ(error(small("llama"), {"--trainer", "ep=2"}),
            "--trainer: ep: the model has no experts");
  EXPECT_EQ(error(small("qwen3_moe"),
                  {"--inference", "dp=3", "--expert-parallel", "--trainer-experts", "hf4"}),
            "--expert-parallel: 3 ranks per replica do not divide 8 experts, and transformers "
            "4's per-expert weights are stacked whole (use --trainer-experts titan or hf)");
  EXPECT_EQ(error(small("llama"), {"--fp8", "int4"}),
            "--fp8: 'int4' (expected auto, none, experts or all)");
  EXPECT_EQ(error(small("llama"), {"--bogus", "1"}),
            "--bogus: unknown option (see weightcast spec --help)");
  c = small("deepseek_v3");
  c["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {64, 64}}};
  EXPECT_EQ(error(c, {}),
            "config.json.quantization_config.weight_block_size: [64,64]: only "
            "128x128 blocks are supported");
}

}  // namespace
}  // namespace weightcast::spec
