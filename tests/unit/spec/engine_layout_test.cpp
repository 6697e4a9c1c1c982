// What engines do that plain DTensor placements cannot say: kv heads replicated when TP exceeds
// them (H placements) and padded dims (vLLM's vocab padding). Each layout is checked rank by rank
// against the engine's rule, then planned and verified byte for byte.
#include <gtest/gtest.h>

#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::spec {
namespace {

using nlohmann::json;

json topology() {
  return json::parse(R"js({"format": "weightcast.topology/v1", "hosts": [
    {"name": "t0", "gpus": 8}, {"name": "i0", "gpus": 8}]})js");
}

// 8 q heads and 2 kv heads of 4 rows, fused qkv under TP `tp`; a vocab of `vocab` rows padded
// to `padded`, sharded over TP.
json trainer(int vocab) {
  json t = json::parse(R"js({"format": "weightcast.spec/v1", "role": "trainer",
    "dims": {"hidden": 16, "head": 4},
    "mesh": {"axes": [{"name": "fsdp", "size": 2}], "devices": {"host": "t0", "gpus_per_host": 8}},
    "params": [
      {"name": "q", "shape": ["8*head", "hidden"], "dtype": "bf16", "placement": {"fsdp": "Shard(dim=0)"}},
      {"name": "k", "shape": ["2*head", "hidden"], "dtype": "bf16", "placement": {"fsdp": "S(0)"}},
      {"name": "v", "shape": ["2*head", "hidden"], "dtype": "bf16", "placement": {"fsdp": "S(0)"}}]})js");
  t["params"].push_back({{"name", "embed"},
                         {"shape", json::array({vocab, "hidden"})},
                         {"dtype", "bf16"},
                         {"placement", {{"fsdp", "S(0)"}}}});
  return t;
}

json inference(int tp, int padded) {
  json i = json::parse(R"js({"format": "weightcast.spec/v1", "role": "inference",
    "dims": {"hidden": 16, "head": 4},
    "params": [
      {"name": "qkv", "shape": ["12*head", "hidden"], "dtype": "bf16", "placement": {"tp": "H(0, head)"},
       "from": {"concat": ["q", "k", "v"], "dim": 0}}]})js");
  i["replicas"] = {{"count", 1},
                   {"mesh", {{"axes", json::array({{{"name", "tp"}, {"size", tp}}})}}},
                   {"devices", {{"host", "i0"}, {"gpus_per_host", 8}}}};
  i["params"].push_back({{"name", "embed"},
                         {"shape", json::array({padded, "hidden"})},
                         {"dtype", "bf16"},
                         {"placement", {{"tp", "S(0)"}}},
                         {"pad", json::array({0})},
                         {"from", "embed"}});
  return i;
}

Result<Inputs> inputs(int tp, int vocab, int padded, int64_t scale = 1) {
  return make_inputs(trainer(vocab), inference(tp, padded), topology(), {scale}, {"T", "I", "C"});
}

void plans_and_verifies(const Inputs& in) {
  auto p = plan::make_plan(in, {});
  ASSERT_TRUE(p) << p.status().message();
  auto v = plan::verify_plan(in, *p);
  ASSERT_TRUE(v) << v.status().message();
  EXPECT_TRUE(plan::verify_plan(in, *p, 3)) << "a second step";
}

TEST(EngineLayout, KvHeadsAreReplicatedWhenTpExceedsThem) {
  auto in = inputs(8, 64, 64);
  ASSERT_TRUE(in) << in.status().message();
  const DestParam& qkv = in->inference.params[0];
  const Mesh& mesh = in->inference.replicas[0];
  for (int64_t r = 0; r < 8; ++r) {
    auto dl = dest_local(qkv, mesh, r);
    ASSERT_TRUE(dl);
    // vLLM: one of the 8 q heads per rank; kv head r / (tp / kv heads) = r / 4.
    EXPECT_EQ(dl->shape.str(), "[12, 16]") << r;
    EXPECT_EQ(dl->parts[0].global.str(), fmt::format("[{}:{}, 0:16]", 4 * r, 4 * r + 4));
    const int64_t kv = r / 4;
    EXPECT_EQ(dl->parts[1].global.str(), fmt::format("[{}:{}, 0:16]", 4 * kv, 4 * kv + 4)) << r;
    EXPECT_EQ(dl->parts[2].global, dl->parts[1].global);
    EXPECT_EQ(dl->parts[2].offset, 8);
  }
  plans_and_verifies(*in);
  // Fewer ranks than kv heads: whole heads per rank, as S(0) would but never half a head.
  auto in2 = inputs(2, 64, 64);
  ASSERT_TRUE(in2) << in2.status().message();
  auto dl = dest_local(in2->inference.params[0], in2->inference.replicas[0], 1);
  EXPECT_EQ(dl->parts[1].global.str(), "[4:8, 0:16]");
  EXPECT_EQ(dl->shape.str(), "[24, 16]");
  plans_and_verifies(*in2);
}

TEST(EngineLayout, HeadsNestedUnderOtherShardsStayInsideThem) {
  // fsdp cuts 256 rows into 86 + 86 + 84, less than a 128-row head each: tp's H then holds
  // nothing (and never a box past what fsdp left).
  Mesh m;
  m.axes = {{"fsdp", 3}, {"tp", 2}};
  m.devices.resize(6);
  Placement heads{Placement::Kind::kHeads, 0, 128};
  PlacementMap pm{{"fsdp", {Placement::Kind::kShard, 0}}, {"tp", heads}};
  for (int64_t r = 0; r < 6; ++r) {
    auto b = local_box(core::Shape::of({256, 4}), pm, m, r);
    ASSERT_TRUE(b);
    EXPECT_TRUE(b->empty()) << b->str();
    EXPECT_LE(b->hi[0], 256);
  }
  // Two heads per fsdp shard: each tp rank one of them.
  Mesh m2;
  m2.axes = {{"fsdp", 2}, {"tp", 2}};
  m2.devices.resize(4);
  EXPECT_EQ(local_box(core::Shape::of({512, 4}), pm, m2, 3)->str(), "[384:512, 0:4]");
}

TEST(EngineLayout, HeadsShrinkWithScale) {
  auto in = inputs(4, 64, 64, 2);
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->inference.params[0].placement.at("tp").str(), "H(0,2)");
  plans_and_verifies(*in);
}

TEST(EngineLayout, PaddedRowsAreNeverWritten) {
  // 50 rows padded to 64 over TP4 (16 a rank): rank 3 holds rows 48..49 then 14 of padding.
  auto in = inputs(4, 50, 64);
  ASSERT_TRUE(in) << in.status().message();
  const DestParam& e = in->inference.params[1];
  auto dl = dest_local(e, in->inference.replicas[0], 3);
  ASSERT_TRUE(dl);
  EXPECT_EQ(dl->shape.str(), "[16, 16]");
  EXPECT_EQ(dl->parts[0].global.str(), "[48:50, 0:16]");
  plans_and_verifies(*in);
  // 10 rows padded to 64 over TP8: ranks 2..7 hold padding only, and get no writes.
  auto all_pad = inputs(8, 10, 64);
  ASSERT_TRUE(all_pad) << all_pad.status().message();
  auto dl7 = dest_local(all_pad->inference.params[1], all_pad->inference.replicas[0], 7);
  ASSERT_TRUE(dl7);
  EXPECT_TRUE(dl7->parts[0].global.empty());
  plans_and_verifies(*all_pad);
}

TEST(EngineLayout, StridedShardIsFsdpOverTp) {
  // FSDP2 over TP on a [fsdp=2, tp=2] mesh: DTensor prints (_StridedShard(dim=0, sf=2),
  // Shard(dim=0)); rank (f, t) holds chunk f of TP chunk t: rows 4t + 2f .. 4t + 2f + 2.
  json t = json::parse(R"js({"format": "weightcast.spec/v1", "role": "trainer",
    "mesh": {"axes": [{"name": "fsdp", "size": 2}, {"name": "tp", "size": 2}],
             "devices": {"host": "t0", "gpus_per_host": 8}},
    "params": [{"name": "w", "shape": [8, 4], "dtype": "bf16",
                "placement": {"fsdp": "_StridedShard(dim=0, sf=2)", "tp": "Shard(dim=0)"}}]})js");
  json i = json::parse(R"js({"format": "weightcast.spec/v1", "role": "inference",
    "replicas": {"count": 1, "mesh": {"axes": [{"name": "tp", "size": 2}]},
                 "devices": {"host": "i0", "gpus_per_host": 8}},
    "params": [{"name": "w", "shape": [8, 4], "dtype": "bf16", "placement": {"tp": "S(0)"},
                "from": "w"}]})js");
  auto in = make_inputs(t, i, topology(), {}, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  const Param& w = in->trainer.params[0];
  EXPECT_EQ(w.placement.at("fsdp").str(), "SS(0,2)");
  for (int64_t f = 0; f < 2; ++f)
    for (int64_t tp = 0; tp < 2; ++tp)
      EXPECT_EQ(local_box(w.shape, w.placement, in->trainer.mesh, f * 2 + tp)->str(),
                fmt::format("[{}:{}, 0:4]", 4 * tp + 2 * f, 4 * tp + 2 * f + 2));
  plans_and_verifies(*in);
  t["params"][0]["placement"]["fsdp"] = "_StridedShard(dim=0, sf=4)";
  auto bad = make_inputs(t, i, topology(), {}, {"T", "I", "C"});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("trainer.params[0].placement.fsdp: _StridedShard of dim 0 "
                                        "with sf=4, but the other axes shard that dim into 2"),
            std::string::npos)
      << bad.status().message();
}

// Experts stored one by one (transformers 4's checkpoints) stacked as FusedMoE holds them: the
// concatenation of 6 experts' [4, 8] weights sharded whole over EP, ranks taking whole experts
// or, when the split falls inside one, pieces of it; the engine sees [experts, 4, 8].
TEST(EngineLayout, WholeConcatsSplitAcrossPartsAndViewAsItems) {
  json t = json::parse(R"js({"format": "weightcast.spec/v1", "role": "trainer",
    "mesh": {"axes": [{"name": "fsdp", "size": 2}], "devices": {"host": "t0", "gpus_per_host": 8}},
    "params": [{"name": "e{e}", "for": {"e": [0, 6]}, "shape": [4, 8], "dtype": "bf16",
                "placement": {"fsdp": "S(1)"}}]})js");
  auto inference = [](int ep) {
    json i = json::parse(R"js({"format": "weightcast.spec/v1", "role": "inference",
      "params": [{"name": "w", "shape": [24, 8], "dtype": "bf16", "placement": {"ep": "S(0)"},
                  "view_items": 6,
                  "from": {"concat": ["e0", "e1", "e2", "e3", "e4", "e5"], "dim": 0,
                           "shard": "whole"}}]})js");
    i["replicas"] = {{"count", 1},
                     {"mesh", {{"axes", json::array({{{"name", "ep"}, {"size", ep}}})}}},
                     {"devices", {{"host", "i0"}, {"gpus_per_host", 8}}}};
    return i;
  };
  auto in = make_inputs(t, inference(3), topology(), {}, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  const DestParam& w = in->inference.params[0];
  auto dl = dest_local(w, in->inference.replicas[0], 1);  // rows 8..16: experts 2 and 3
  ASSERT_TRUE(dl);
  EXPECT_EQ(dl->shape.str(), "[8, 8]");
  EXPECT_TRUE(dl->parts[1].global.empty());
  EXPECT_EQ(dl->parts[2].global.str(), "[0:4, 0:8]");
  EXPECT_EQ(dl->parts[3].offset, 4);
  EXPECT_EQ(view_shape(w, dl->shape, false).str(), "[2, 4, 8]");
  plans_and_verifies(*in);
  // 5 ranks: 24 rows in chunks of 5, so splits fall inside experts.
  auto in5 = make_inputs(t, inference(5), topology(), {}, {"T", "I", "C"});
  ASSERT_TRUE(in5) << in5.status().message();
  auto d1 = dest_local(in5->inference.params[0], in5->inference.replicas[0], 1);  // rows 5..10
  EXPECT_EQ(d1->parts[1].global.str(), "[1:4, 0:8]");
  EXPECT_EQ(d1->parts[2].global.str(), "[0:2, 0:8]");
  EXPECT_EQ(d1->parts[2].offset, 3);
  plans_and_verifies(*in5);
  json bad = inference(3);
  bad["params"][0]["from"]["shard"] = "rows";
  auto b = make_inputs(t, bad, topology(), {}, {"T", "I", "C"});
  ASSERT_FALSE(b);
  EXPECT_NE(b.status().message().find("inference.params[0].from.shard: 'rows': expected \"parts\""),
            std::string::npos)
      << b.status().message();
  bad = inference(3);
  bad["params"][0]["view_items"] = 5;
  b = make_inputs(t, bad, topology(), {}, {"T", "I", "C"});
  ASSERT_FALSE(b);
  EXPECT_NE(b.status().message().find(
                "inference.params[0].view_items: 5 items do not divide dim 0 of 24 rows"),
            std::string::npos)
      << b.status().message();
}

TEST(EngineLayout, BadHeadsAndPaddingAreNamed) {
  auto expect_error = [](json t, json i, const std::string& what) {
    auto in = make_inputs(t, i, topology(), {}, {"T", "I", "C"});
    ASSERT_FALSE(in) << what;
    EXPECT_NE(in.status().message().find(what), std::string::npos) << in.status().message();
  };
  json i = inference(8, 64);
  i["params"][0]["placement"]["tp"] = "H(0, 3)";
  expect_error(trainer(64), i,
               "inference.params[0].placement.tp: part 0 of the concat: dim 0 of 32 rows is not a "
               "whole number of heads of 3 rows");
  i = inference(8, 64);
  i["replicas"]["mesh"]["axes"][0]["size"] = 3;
  expect_error(trainer(64), i,
               "part 0 of the concat: 8 heads over axis 'tp' of size 3: one must divide the other");
  i = inference(8, 64);
  i["params"][0]["placement"]["tp"] = "H(0)";
  expect_error(trainer(64), i, "bad placement 'H(0)': expected H(dim, rows per head)");
  i["params"][0]["placement"]["tp"] = "H(0, nothead)";
  expect_error(trainer(64), i, "rows per head must be a positive integer or a name in \"dims\"");
  i = inference(4, 48);
  expect_error(trainer(50), i,
               "inference.params[1].shape: expected [50, 16] after mapping from embed, got [48, "
               "16] (larger only on the \"pad\" dims)");
  i = inference(4, 64);
  i["params"][1]["pad"] = json::array({1});
  expect_error(trainer(50), i, "expected [50, 16] after mapping from embed, got [64, 16]");
  i = inference(4, 64);
  i["params"][1]["pad"] = json::array({2});
  expect_error(trainer(50), i, "inference.params[1].pad[0]");
  i = inference(4, 64);
  i["params"][0]["pad"] = json::array({0});
  expect_error(trainer(64), i, "inference.params[0].pad: padding needs a single source");
  i = inference(4, 64);
  i["params"][1]["dtype"] = "fp8_e4m3";
  i["params"][1]["quant"] = {{"block", {4, 4}}, {"scale", "s"}};
  expect_error(trainer(64), i,
               "inference.params[1].pad: padding and block quantization cannot be combined");
}

}  // namespace
}  // namespace weightcast::spec
