// Planner, plan format and verifier on the tiny specs and the shipped configs: plans verify
// byte-exact, round-trip through JSON, and every tampering is caught with a precise message.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "../test_specs.h"
#include "weightcast/plan/check.h"
#include "weightcast/plan/part.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/project.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"

namespace weightcast::plan {
namespace {

spec::Inputs tiny(int64_t scale = 1) {
  auto in = spec::make_inputs(testing::tiny_trainer(), testing::tiny_inference(),
                              testing::tiny_topology(), {scale}, {"t", "i", "c"});
  EXPECT_TRUE(in) << in.status().message();
  return std::move(in).value();
}

spec::Inputs config(const std::string& name, int64_t scale) {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + name + "/";
  auto in = spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json",
                              {scale});
  EXPECT_TRUE(in) << in.status().message();
  return std::move(in).value();
}

TEST(Planner, TinyPlanVerifies) {
  const spec::Inputs in = tiny();
  auto p = make_plan(in, {});
  ASSERT_TRUE(p) << p.status().message();
  EXPECT_EQ(p->senders.size(), 4u);
  EXPECT_EQ(p->receivers.size(), 4u);
  auto v = verify_plan(in, *p);
  ASSERT_TRUE(v) << v.status().message();
  uint64_t dest_bytes = 0;
  for (const DestTensor& d : p->dests) dest_bytes += d.bytes;
  EXPECT_EQ(v->bytes_checked, dest_bytes);
  EXPECT_EQ(v->writes, p->writes.size());
  // Two steps write different values; both verify.
  EXPECT_TRUE(verify_plan(in, *p, 2));
}

// Packing small units into gathered projections weighs the writes saved against the pieces
// gathered: demo-moe packs everything at no gather cost, nothing at its topology's gather_us
// (the default, recorded in the plan; the host collective's cost), some in between. Every plan
// verifies.
TEST(Planner, PackingWeighsTheGatherCost) {
  const spec::Inputs in = config("demo-moe", 1);
  auto plan_at = [&](double cost) {
    Options o;
    o.gather_cost_us = cost;
    auto p = make_plan(in, o);
    EXPECT_TRUE(p) << p.status().message();
    auto v = verify_plan(in, *p);
    EXPECT_TRUE(v) << v.status().message();
    return std::move(p).value();
  };
  // (Gathered pieces cost NIC time as the host collective sends them: at 1 us a piece, some pack.)
  const Plan always = plan_at(0), never = plan_at(1e6), some = plan_at(1),
             by_topology = plan_at(-1), twenty = plan_at(20);
  EXPECT_EQ(never.gathers.size(), 0u);  // demo-moe's shards fall on block boundaries
  EXPECT_GT(always.gathers.size(), some.gathers.size());
  EXPECT_GT(some.gathers.size(), 0u);
  EXPECT_LT(always.writes.size(), some.writes.size());
  EXPECT_LT(some.writes.size(), never.writes.size());
  EXPECT_EQ(in.topology.hosts[0].gather_us, 20.0);
  EXPECT_EQ(by_topology.options.gather_cost_us, 20.0);
  EXPECT_EQ(by_topology.gathers.size(), 0u);
  EXPECT_EQ(to_json(by_topology), to_json(twenty));
  auto back = from_json(to_json(by_topology));
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_EQ(back->options.gather_cost_us, 20.0);
  EXPECT_EQ(back->options.write_cost_us, 2.0);
}

TEST(Planner, ExpectedImmsCountEveryWrite) {
  auto p = make_plan(tiny(), {});
  ASSERT_TRUE(p);
  std::vector<uint64_t> per_recv(p->receivers.size(), 0);
  for (const Write& w : p->writes) ++per_recv[p->dests[w.dest].receiver];
  for (size_t r = 0; r < p->receivers.size(); ++r) {
    uint64_t expected = 0;
    for (uint32_t c : p->receivers[r].expected_imms) expected += c;
    EXPECT_EQ(expected, per_recv[r]);
  }
}

TEST(Planner, SmallLimitsSplitWritesAndStillVerify) {
  const spec::Inputs in = tiny();
  Options o;
  o.max_write_bytes = 8;
  o.max_unit_bytes = 16;
  o.write_cost_us = 0;  // never pack
  auto p = make_plan(in, o);
  ASSERT_TRUE(p) << p.status().message();
  for (const Write& w : p->writes) EXPECT_LE(w.len, 8u);
  EXPECT_TRUE(verify_plan(in, *p)) << verify_plan(in, *p).status().message();
}

TEST(Planner, StagingWatermarkIsEnforced) {
  Options o;
  o.staging_watermark = 4;
  auto p = make_plan(tiny(), o);
  ASSERT_FALSE(p);
  EXPECT_NE(p.status().message().find("raise --staging-mb"), std::string::npos)
      << p.status().message();
}

TEST(Planner, CrossDomainGatherIsReportedOrRefused) {
  // Put the two FSDP halves of the trainer on different hosts: the 2x2 FP8 blocks of "aq" that
  // straddle the shard boundary of "a" then need a gather across hosts.
  nlohmann::json t = testing::tiny_trainer(), c = testing::tiny_topology();
  t["dims"]["n"] = 6;
  t["mesh"]["devices"]["gpus_per_host"] = 1;
  c["hosts"][0]["for"]["h"] = nlohmann::json::array({0, 4});
  nlohmann::json i = testing::tiny_inference();
  i["dims"]["n"] = 6;
  i["dims"]["n+m"] = 10;
  auto in = spec::make_inputs(t, i, c, {}, {"t", "i", "c"});
  ASSERT_TRUE(in) << in.status().message();
  auto p = make_plan(*in, {});
  ASSERT_TRUE(p) << p.status().message();
  bool cross = false;
  for (const Gather& g : p->gathers) cross = cross || g.cross_domain;
  EXPECT_TRUE(cross);
  EXPECT_NE(report(*p, "x").find("WARNING"), std::string::npos);
  EXPECT_TRUE(verify_plan(*in, *p));
  Options strict;
  strict.intra_domain_gathers_only = true;
  auto refused = make_plan(*in, strict);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find("'aq' on inference replica"), std::string::npos)
      << refused.status().message();
}

TEST(PlanJson, RoundTripsExactly) {
  const spec::Inputs in = tiny();
  auto p = make_plan(in, {});
  ASSERT_TRUE(p);
  const std::string text = to_json(*p);
  auto back = from_json(text);
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_EQ(to_json(*back), text);
  EXPECT_TRUE(verify_plan(in, *back));
}

TEST(PlanJson, RejectsCorruptPlans) {
  auto p = make_plan(tiny(), {});
  ASSERT_TRUE(p);
  nlohmann::json j = nlohmann::json::parse(to_json(*p));
  j["writes"][0][1] = 100000;
  auto r = from_json(j.dump());
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("plan.writes[0]: index 100000 out of range"),
            std::string::npos)
      << r.status().message();
  j = nlohmann::json::parse(to_json(*p));
  j["format"] = "weightcast.plan/v0";
  EXPECT_FALSE(from_json(j.dump()));
  EXPECT_FALSE(from_json("{\"format\": "));
}

TEST(PlanJson, RefusesPlansOfOtherInputs) {
  auto p = make_plan(tiny(), {});
  ASSERT_TRUE(p);
  auto v = verify_plan(tiny(2), *p);
  ASSERT_FALSE(v);
  EXPECT_NE(v.status().message().find("plan was made from other inputs"), std::string::npos);
}

// The verifier must catch every kind of damage, and say where.
TEST(Verifier, CatchesTampering) {
  const spec::Inputs in = tiny();
  Options no_packing;
  no_packing.write_cost_us = 0;  // keep direct writes from shards in the plan
  auto good = make_plan(in, no_packing);
  ASSERT_TRUE(good);
  ASSERT_TRUE(verify_plan(in, *good));
  auto expect_fail = [&](Plan p, const char* what) {
    auto v = verify_plan(in, p);
    ASSERT_FALSE(v) << "tampering not caught, wanted: " << what;
    EXPECT_NE(v.status().message().find(what), std::string::npos) << v.status().message();
  };
  {  // a write lands one byte off
    Plan p = *good;
    for (Write& w : p.writes)
      if (w.len > 1) {
        w.dst_off += 1;
        w.len -= 1;
        break;
      }
    expect_fail(p, "written 0 times");
  }
  {  // a write is dropped from a sender's list
    Plan p = *good;
    auto& tasks = p.senders[p.writes[0].sender].tasks;
    for (size_t k = 0; k < tasks.size(); ++k)
      if (tasks[k].op == Task::Op::kWrite) {
        tasks.erase(tasks.begin() + static_cast<long>(k));
        break;
      }
    expect_fail(p, "imms arrived, plan expects");
  }
  {  // an expected count is off by one
    Plan p = *good;
    p.receivers[1].expected_imms[0] += 1;
    expect_fail(p, "receivers[1].expected_imms[0]: 14 writes reach it, the plan expects 15");
  }
  {  // two staged writes of one sender read each other's projection: every offset is in range,
     // the bytes differ from the reference
    Plan p = *good;
    bool done = false;
    for (size_t i = 0; i < p.writes.size() && !done; ++i)
      for (size_t k = i + 1; k < p.writes.size() && !done; ++k) {
        Write &a = p.writes[i], &b = p.writes[k];
        if (a.project >= 0 && b.project >= 0 && a.project != b.project && a.sender == b.sender &&
            a.len == b.len && p.dests[a.dest].dtype == p.dests[b.dest].dtype &&
            p.dests[a.dest].scale == p.dests[b.dest].scale) {
          std::swap(a.project, b.project);
          std::swap(a.src_off, b.src_off);
          done = true;
        }
      }
    ASSERT_TRUE(done);
    expect_fail(p, "mismatch at replica");
  }
  {  // a write names a source region past the shard
    Plan p = *good;
    for (Write& w : p.writes)
      if (w.project == Write::kDirect) {
        w.src_off = 1 << 20;
        break;
      }
    expect_fail(p, "reads [1048576, +48) of sender 0's shard of 'a' (48 bytes)");
  }
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Golden dry-run reports of the small shipped configs. WC_UPDATE_GOLDEN=1 rewrites them.
class Golden : public ::testing::TestWithParam<const char*> {};

TEST_P(Golden, ReportMatches) {
  const spec::Inputs in = config(GetParam(), 1);
  auto p = make_plan(in, {});
  ASSERT_TRUE(p) << p.status().message();
  const std::string got = report(*p, GetParam());
  const std::string path =
      std::string(WC_SOURCE_DIR) + "/tests/fixtures/golden/" + GetParam() + ".txt";
  if (std::getenv("WC_UPDATE_GOLDEN")) {
    std::ofstream(path) << got;
    GTEST_SKIP() << "rewrote " << path;
  }
  EXPECT_EQ(got, read_file(path)) << "report changed; if intended, rerun with WC_UPDATE_GOLDEN=1";
}

INSTANTIATE_TEST_SUITE_P(Configs, Golden, ::testing::Values("llama-3.1-8b", "qwen3-30b-a3b"));

// Keeps only layers [lo, hi) of a spec's "for": {"i": ...} patterns (layouts stay as they are).
void limit_layers(nlohmann::json& spec, int64_t lo, int64_t hi) {
  for (auto& p : spec["params"])
    if (p.contains("for") && p["for"].contains("i")) {
      auto& r = p["for"]["i"];
      const int64_t a = std::max(r[0].get<int64_t>(), lo), b = std::min(r[1].get<int64_t>(), hi);
      r = nlohmann::json::array({a, std::max(a, b)});
    }
}

// Every shipped config verifies byte-exact at a scale (and a layer window) that keeps the test
// quick. The windows of the MoE models cross the dense/MoE boundary and Kimi-K2's pipeline stages.
struct Scaled {
  const char* name;
  int64_t scale, first_layer, end_layer;
  friend void PrintTo(const Scaled& s, std::ostream* os) {
    *os << s.name << " scale 1/" << s.scale << " layers [" << s.first_layer << ", " << s.end_layer
        << ")";
  }
};
class ConfigVerify : public ::testing::TestWithParam<Scaled> {};

TEST_P(ConfigVerify, ByteExact) {
  const Scaled& c = GetParam();
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + c.name + "/";
  auto tj = spec::load_json_file(dir + "trainer.json");
  auto ij = spec::load_json_file(dir + "inference.json");
  auto cj = spec::load_json_file(dir + "topology.json");
  ASSERT_TRUE(tj && ij && cj);
  limit_layers(*tj, c.first_layer, c.end_layer);
  limit_layers(*ij, c.first_layer, c.end_layer);
  auto loaded = spec::make_inputs(*tj, *ij, *cj, {c.scale}, {"t", "i", "c"});
  ASSERT_TRUE(loaded) << loaded.status().message();
  const spec::Inputs& in = *loaded;
  auto p = make_plan(in, {});
  ASSERT_TRUE(p) << p.status().message();
  auto v = verify_plan(in, *p);
  ASSERT_TRUE(v) << v.status().message();
  EXPECT_GT(v->bytes_checked, 0u);
}

INSTANTIATE_TEST_SUITE_P(Configs, ConfigVerify,
                         ::testing::Values(Scaled{"llama-3.1-8b", 32, 0, 99},
                                           Scaled{"qwen3-30b-a3b", 64, 0, 99},
                                           Scaled{"deepseek-v3", 64, 2, 5},
                                           Scaled{"kimi-k2", 64, 0, 2},
                                           Scaled{"kimi-k2", 64, 30, 32}),
                         [](const auto& param_info) {
                           std::string n = std::string(param_info.param.name) + "_layers_" +
                                           std::to_string(param_info.param.first_layer);
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// Where each gather lands in its root's buffer, computed as the host collective does: per root,
// gathers in phase order, then in list order.
std::vector<std::pair<uint32_t, uint64_t>> gather_offsets(const Plan& p) {
  std::map<uint32_t, uint64_t> size;
  std::vector<std::pair<uint32_t, uint64_t>> off(p.gathers.size());
  for (uint16_t ph = 0; ph < p.phases; ++ph)
    for (uint32_t g = 0; g < p.gathers.size(); ++g)
      if (p.gathers[g].phase == ph) {
        off[g] = {p.gathers[g].root, size[p.gathers[g].root]};
        size[p.gathers[g].root] += static_cast<uint64_t>(p.gathers[g].box.numel());
      }
  return off;
}

class PlanParts : public ::testing::TestWithParam<std::pair<const char*, int64_t>> {};

TEST_P(PlanParts, EveryRankGetsExactlyItsWorkWithWholePlanIds) {
  const spec::Inputs in = config(GetParam().first, GetParam().second);
  auto whole = make_plan(in, {});
  ASSERT_TRUE(whole) << whole.status().message();
  const auto whole_off = gather_offsets(*whole);
  size_t writes = 0, sizes = 0;
  for (uint32_t r = 0; r < whole->senders.size(); ++r) {
    const Plan part = trainer_part(*whole, r);
    const std::string text = to_json(part);
    sizes += text.size();
    auto back = from_json(text);
    ASSERT_TRUE(back) << back.status().message();
    ASSERT_EQ(to_json(*back), text);
    // Its writes are the whole plan's writes of this sender, in order, same bytes and targets.
    std::vector<const Write*> mine;
    for (const Write& w : whole->writes)
      if (w.sender == r) mine.push_back(&w);
    ASSERT_EQ(part.writes.size(), mine.size()) << "trainer " << r;
    for (size_t i = 0; i < mine.size(); ++i) {
      const Write &a = part.writes[i], &b = *mine[i];
      ASSERT_EQ(global_dest(part, a.dest), b.dest);
      ASSERT_EQ(std::tie(a.src_off, a.dst_off, a.len, a.phase, a.nic, a.src_param),
                std::tie(b.src_off, b.dst_off, b.len, b.phase, b.nic, b.src_param));
      ASSERT_EQ(a.project < 0, b.project < 0);
      if (a.project >= 0) {
        const Project &pa = part.projects[a.project], &pb = whole->projects[b.project];
        ASSERT_EQ(pa.staging_off, pb.staging_off);
        ASSERT_EQ(global_dest(part, pa.dest), pb.dest);
        ASSERT_EQ(pa.inputs.size(), pb.inputs.size());
        for (size_t k = 0; k < pa.inputs.size(); ++k)
          if (pb.inputs[k].gather >= 0) {  // the same gather, at the same place in its root
            ASSERT_GE(pa.inputs[k].gather, 0);
            EXPECT_EQ(part.gathers[pa.inputs[k].gather].box.str(),
                      whole->gathers[pb.inputs[k].gather].box.str());
          }
      }
    }
    writes += part.writes.size();
    // Every gather it takes part in sits at the same offset of its root's buffer as in the
    // whole plan (members and roots must agree), and its tasks are all present.
    const auto part_off = gather_offsets(part);
    auto per_root = [](const Plan& p, const std::vector<std::pair<uint32_t, uint64_t>>& off,
                       uint32_t root) {
      std::vector<std::string> v;
      for (uint32_t g = 0; g < p.gathers.size(); ++g)
        if (p.gathers[g].root == root)
          v.push_back(fmt::format("{}@{}/{} at {}", p.gathers[g].box.str(), p.gathers[g].param,
                                  p.gathers[g].phase, off[g].second));
      return v;
    };
    std::set<uint32_t> roots;
    for (const Gather& g : part.gathers) roots.insert(g.root);
    for (uint32_t root : roots)
      ASSERT_EQ(per_root(part, part_off, root), per_root(*whole, whole_off, root))
          << "trainer " << r << " root " << root;
    EXPECT_EQ(part.senders[r].tasks.size(), whole->senders[r].tasks.size());
  }
  EXPECT_EQ(writes, whole->writes.size());
  for (uint32_t r = 0; r < whole->receivers.size(); ++r) {
    const Plan part = inference_part(*whole, r);
    const std::string text = to_json(part);
    sizes += text.size();
    auto back = from_json(text);
    ASSERT_TRUE(back) << back.status().message();
    // Same dest tensors in the same order, and the same immediates expected per sender and phase.
    std::vector<uint32_t> ids;
    for (uint32_t d = 0; d < whole->dests.size(); ++d)
      if (whole->dests[d].receiver == r) ids.push_back(d);
    EXPECT_EQ(back->dest_ids, ids);
    std::map<std::pair<uint16_t, uint32_t>, int> a, b;
    for (const Write& w : back->writes) ++a[{w.phase, w.sender}];
    for (const Write& w : whole->writes)
      if (whole->dests[w.dest].receiver == r) ++b[{w.phase, w.sender}];
    EXPECT_EQ(a, b) << "inference " << r;
  }
  std::printf("%s: whole plan %zu B of JSON, all parts together %zu B\n", GetParam().first,
              to_json(*whole).size(), sizes);
}

INSTANTIATE_TEST_SUITE_P(Configs, PlanParts,
                         ::testing::Values(std::make_pair("demo-moe", int64_t{1}),
                                           std::make_pair("qwen3-30b-a3b", int64_t{16}),
                                           std::make_pair("deepseek-v3", int64_t{64})),
                         [](const auto& p) {
                           std::string n = p.param.first;
                           for (char& ch : n)
                             if (ch == '-' || ch == '.') ch = '_';
                           return n;
                         });

TEST(PlanParts, SourcelessWritesAreOnlyValidInAnInferencePart) {
  auto p = make_plan(tiny(), {});
  ASSERT_TRUE(p);
  Plan part = inference_part(*p, 0);
  ASSERT_TRUE(from_json(to_json(part)));
  part.part_role = "trainer";  // the same writes in a trainer's part have lost their source
  auto bad = from_json(to_json(part));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("a write reads either staging or a source shard"),
            std::string::npos)
      << bad.status().message();
}

}  // namespace
}  // namespace weightcast::plan

namespace weightcast::plan {
namespace {

// Every build of quantize_blocks_cpu this CPU can run (the others fall back to the baseline).
constexpr CpuIsa kIsas[] = {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512};
const char* isa_name(CpuIsa isa) {
  if (!cpu_has(isa)) return "baseline (the CPU lacks the requested build's instructions)";
  return isa == CpuIsa::kAvx512 ? "avx512" : isa == CpuIsa::kAvx2 ? "avx2" : "baseline";
}

// quantize_blocks_cpu's inlined FP8 encoders against core's scalar ones, written out here as the
// plain loop: random magnitudes over 12 decades (so blocks hold subnormal FP8 results too), edge
// blocks, both formats, and NaN / infinity / zero entries.
TEST(Quantize, FastPathMatchesTheScalarReference) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-30, 10);
  const int64_t lead = 2, R = 37, C = 300, br = 16, bc = 128;
  std::vector<float> x(static_cast<size_t>(lead * R * C));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::ldexp(mant(rng), expo(rng));
  x[5] = 0.0f, x[6] = -0.0f, x[7] = INFINITY, x[8] = NAN, x[900] = -INFINITY;
  for (CpuIsa isa : kIsas)
    for (core::DType t : {core::DType::kFP8E4M3, core::DType::kFP8E5M2}) {
      SCOPED_TRACE(isa_name(isa));
      const int64_t sr = (R + br - 1) / br, sc = (C + bc - 1) / bc;
      std::vector<std::byte> got(x.size()), got_s(static_cast<size_t>(lead * sr * sc) * 4);
      quantize_blocks_cpu_on(isa, x.data(), lead, R, C, br, bc, t, got.data(), got_s.data());
      for (int64_t l = 0; l < lead; ++l)
        for (int64_t i = 0; i < sr; ++i)
          for (int64_t j = 0; j < sc; ++j) {
            float amax = 0;
            for (int64_t r = i * br; r < std::min(R, (i + 1) * br); ++r)
              for (int64_t c = j * bc; c < std::min(C, (j + 1) * bc); ++c)
                amax = std::fmax(amax, std::fabs(x[static_cast<size_t>((l * R + r) * C + c)]));
            const float scale = amax > 0 ? amax / core::quant_max(t) : 1.0f;
            float s;
            std::memcpy(&s, got_s.data() + ((l * sr + i) * sc + j) * 4, 4);
            ASSERT_EQ(std::bit_cast<uint32_t>(s), std::bit_cast<uint32_t>(scale));
            for (int64_t r = i * br; r < std::min(R, (i + 1) * br); ++r)
              for (int64_t c = j * bc; c < std::min(C, (j + 1) * bc); ++c) {
                const size_t e = static_cast<size_t>((l * R + r) * C + c);
                const float q = x[e] / scale;
                const uint8_t want = t == core::DType::kFP8E4M3 ? core::float_to_fp8e4m3(q)
                                                                : core::float_to_fp8e5m2(q);
                ASSERT_EQ(static_cast<uint8_t>(got[e]), want)
                    << core::dtype_name(t) << " element " << e << " = " << q;
              }
          }
    }
}

// The encoders on every value that matters, through quantize_blocks_cpu itself: one-row blocks of
// 40 whose first element is the format's largest value, so the scale is exactly 1 and the others
// are encoded as they are (columns 0-31 through the vector lanes, 32-39 through the scalar tail).
// Every BF16 pattern up to that value, then 2^20 random float32 patterns (mantissas BF16 cannot
// hold, where rounding is decided), each checked against core's scalar encoder; every
// target_clones build must give the same bytes.
TEST(Quantize, EveryBf16AndRandomFloatsEncodeExactly) {
  std::mt19937 rng(11);
  constexpr int64_t kC = 40;
  for (core::DType t : {core::DType::kFP8E4M3, core::DType::kFP8E5M2}) {
    const float qmax = core::quant_max(t);
    std::vector<float> vals;
    for (uint32_t b = 0; b < 65536; ++b) {
      const float v = std::bit_cast<float>(b << 16);
      if (std::fabs(v) <= qmax) vals.push_back(v);  // (NaNs compare false: left out)
    }
    for (int k = 0; k < (1 << 20); ++k) {
      const float v = std::bit_cast<float>(static_cast<uint32_t>(rng()));
      if (std::fabs(v) <= qmax) vals.push_back(v);
    }
    const auto R = static_cast<int64_t>((vals.size() + kC - 2) / (kC - 1));
    std::vector<float> x(static_cast<size_t>(R * kC), 0.0f);
    for (size_t i = 0; i < vals.size(); ++i)
      x[static_cast<size_t>(i / (kC - 1) * kC + 1 + i % (kC - 1))] = vals[i];
    for (int64_t r = 0; r < R; ++r) x[static_cast<size_t>(r * kC)] = qmax;
    for (CpuIsa isa : kIsas) {
      SCOPED_TRACE(isa_name(isa));
      std::vector<std::byte> got(x.size()), scales(static_cast<size_t>(R) * 4);
      quantize_blocks_cpu_on(isa, x.data(), 1, R, kC, 1, kC, t, got.data(), scales.data());
      for (int64_t r = 0; r < R; ++r) {
        float s;
        std::memcpy(&s, scales.data() + r * 4, 4);
        ASSERT_EQ(s, 1.0f);
      }
      for (size_t i = 0; i < vals.size(); ++i) {
        const float v = vals[i];
        const uint8_t want =
            t == core::DType::kFP8E4M3 ? core::float_to_fp8e4m3(v) : core::float_to_fp8e5m2(v);
        const size_t e = i / (kC - 1) * kC + 1 + i % (kC - 1);
        ASSERT_EQ(static_cast<uint8_t>(got[e]), want)
            << core::dtype_name(t) << " value " << v << " (bits 0x" << std::hex
            << std::bit_cast<uint32_t>(v) << ")";
      }
    }
  }
}

}  // namespace
}  // namespace weightcast::plan

namespace weightcast::plan {
namespace {

// Plans edited by hand or by an attacker: each is refused by the loader or by the check against
// the specs (the first thing verify and every job do), with the JSON path of the bad field.
TEST(PlanChecks, TamperedPlansAreRefusedNamingTheField) {
  const spec::Inputs in = config("demo-moe", 1);
  Options packed;
  packed.gather_cost_us = 0;  // gathers everywhere
  auto direct = make_plan(in, {}), gathered = make_plan(in, packed);
  ASSERT_TRUE(direct && gathered);
  auto first = [](const nlohmann::json& rows, auto pred) {
    for (size_t i = 0; i < rows.size(); ++i)
      if (pred(rows[i])) return i;
    ADD_FAILURE() << "no row to tamper with";
    return size_t{0};
  };
  struct Case {
    const char* what;
    const Plan* plan;
    std::function<void(nlohmann::json&)> edit;
    std::string want;
  };
  const uint64_t wrap = ~uint64_t{0} - 63;  // 2^64 - 64
  auto direct_write = [&](const nlohmann::json& j) {
    return first(j["writes"], [](const nlohmann::json& w) { return w[2] == -1; });
  };
  auto quant = [&](const nlohmann::json& j) {
    return first(j["projects"], [](const nlohmann::json& q) { return q[3] == 2; });
  };
  const std::vector<Case> cases = {
      {"a direct write's source offset wraps", &*direct,
       [&](nlohmann::json& j) { j["writes"][direct_write(j)][7] = wrap; }, "of sender"},
      {"a write's length wraps", &*direct,
       [&](nlohmann::json& j) {
         j["writes"][0][8] = 64;
         j["writes"][0][9] = wrap;
       },
       "writes[0]: [64, +18446744073709551552) runs past"},
      {"a write on NIC 7 of a 1-NIC sender", &*direct,
       [&](nlohmann::json& j) { j["writes"][0][5] = 7; }, "writes[0]: NIC 7 of sender"},
      {"a write to NIC 3 of a 1-NIC receiver", &*direct,
       [&](nlohmann::json& j) { j["writes"][0][6] = 3; }, "writes[0]: NIC 3 of receiver"},
      {"scales past staging", &*direct,
       [&](nlohmann::json& j) { j["projects"][quant(j)][10] = wrap; },
       "scales at 18446744073709551552 (+64) do not follow the values"},
      {"a quantizing projection aimed at a BF16 tensor", &*direct,
       [&](nlohmann::json& j) {
         const size_t q = quant(j);
         const size_t d = j["projects"][q][1];
         j["dests"][d][3] = "bf16";
         j["dests"][d][5] = j["dests"][d][5].get<uint64_t>() * 2;
       },
       "a quantizing projection into bf16"},
      {"a projection with out_bytes 0", &*direct,
       [&](nlohmann::json& j) { j["projects"][quant(j)][7] = 0; }, "out_bytes 0"},
      {"the scale destination is a weight tensor", &*direct,
       [&](nlohmann::json& j) {
         const size_t q = quant(j);
         j["projects"][q][8] = j["projects"][q][1];
       },
       "is not the scale tensor of"},
      {"swapped dest_names", &*direct,
       [&](nlohmann::json& j) { std::swap(j["dest_names"][0], j["dest_names"][1]); },
       "dest_names[0]"},
      {"a gather piece names rank 999", &*gathered,
       [&](nlohmann::json& j) { j["gathers"][0][4][0][0] = 999; },
       "gathers[0].pieces[0]: rank 999 is not a trainer rank"},
      {"a gather in phase 0", &*gathered, [&](nlohmann::json& j) { j["gathers"][0][0] = 0; },
       "gathers[0]: gathers run in phases"},
      {"a receiver with 0 NICs", &*direct,
       [&](nlohmann::json& j) { j["receivers"][0]["nics"] = 0; }, "receivers[0].nics"},
      {"a gather buffer past the root's area", &*gathered,
       [&](nlohmann::json& j) { j["gathers"][0][7] = wrap; }, "gathers[0]: gather buffer at"},
      {"a dest shape of 2^40 x 2^40", &*direct,
       [&](nlohmann::json& j) {
         j["dests"][0][4] = {1ll << 40, 1ll << 40};
       },
       "dests[0]: "},
  };
  for (const Case& c : cases) {
    nlohmann::json j = nlohmann::json::parse(to_json(*c.plan));
    c.edit(j);
    auto p = from_json(j.dump());
    Status st = p ? check_plan(in, *p) : p.status();
    ASSERT_FALSE(st) << c.what << ": accepted";
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << c.what;
    EXPECT_NE(st.message().find(c.want), std::string::npos) << c.what << ": " << st.message();
    if (p) {
      EXPECT_FALSE(verify_plan(in, *p)) << c.what;
    }
  }
}

// 1000 plans with one number changed to a hostile value: each loads and verifies, or is refused;
// nothing crashes (the sanitizers' fuzz target, plan_fuzzer, goes further).
TEST(PlanChecks, MutatedPlansNeverCrashTheLoaderOrTheVerifier) {
  const spec::Inputs in = tiny();
  auto good = make_plan(in, {});
  ASSERT_TRUE(good);
  const nlohmann::json base = nlohmann::json::parse(to_json(*good));
  std::vector<nlohmann::json::json_pointer> numbers;
  std::function<void(const nlohmann::json&, const nlohmann::json::json_pointer&)> walk =
      [&](const nlohmann::json& j, const nlohmann::json::json_pointer& at) {
        if (j.is_number()) numbers.push_back(at);
        if (j.is_array())
          for (size_t i = 0; i < j.size(); ++i) walk(j[i], at / i);
        if (j.is_object())
          for (auto it = j.begin(); it != j.end(); ++it) walk(it.value(), at / it.key());
      };
  walk(base, nlohmann::json::json_pointer());
  ASSERT_GT(numbers.size(), 100u);
  const std::vector<nlohmann::json> hostile = {
      0, 1, -1, 7, 255, 999, 4096, 1ull << 31, 1ull << 40, ~uint64_t{0} - 63, 1ull << 63};
  std::mt19937_64 rng(7);
  int refused = 0;
  for (int k = 0; k < 1000; ++k) {
    nlohmann::json j = base;
    j[numbers[rng() % numbers.size()]] = hostile[rng() % hostile.size()];
    auto p = from_json(j.dump());
    if (!p || !verify_plan(in, *p)) ++refused;
  }
  EXPECT_GT(refused, 500);
}

}  // namespace
}  // namespace weightcast::plan

namespace weightcast::plan {
namespace {

// The engine stripes every write over all NICs (transport::stripe); the plan counts NIC bytes
// the same way, so each NIC of a sender carries its share of every write: never more than one
// byte per write apart, and all of them together what the sender sends.
TEST(Planner, NicBytesAreThoseOfTheEnginesStriping) {
  const spec::Inputs in = tiny();
  auto p = make_plan(in, {});
  ASSERT_TRUE(p);
  for (const Sender& s : p->senders) {
    ASSERT_EQ(s.nic_bytes.size(), 2u);  // the tiny topology's trainer hosts have 2 NICs per GPU
    uint64_t writes = 0;
    for (const Task& t : s.tasks) writes += t.op == Task::Op::kWrite;
    const auto [lo, hi] = std::minmax_element(s.nic_bytes.begin(), s.nic_bytes.end());
    EXPECT_LE(*hi - *lo, writes) << "sender " << s.rank;
    EXPECT_EQ(s.nic_bytes[0] + s.nic_bytes[1], s.bytes_out);
  }
}

TEST(Verify, ALongRunSaysWhereItIs) {
  const std::string d = std::string(WC_SOURCE_DIR) + "/configs/demo-moe/";
  auto in = spec::load_inputs(d + "trainer.json", d + "inference.json", d + "topology.json");
  ASSERT_TRUE(in) << in.status().message();
  auto p = make_plan(*in, {});
  ASSERT_TRUE(p) << p.status().message();
  std::vector<std::string> said;
  VerifyProgress progress{[&](const std::string& m) { said.push_back(m); }, 0};
  auto r = verify_plan(*in, *p, 1, progress);
  ASSERT_TRUE(r) << r.status().message();
  // Every sender and every tensor, in order, ending at the totals.
  ASSERT_EQ(said.size(), p->senders.size() + p->dests.size());
  EXPECT_EQ(said.front(), "senders replayed 1/" + std::to_string(p->senders.size()));
  EXPECT_EQ(said.back(),
            fmt::format("tensors checked against the reference {0}/{0}", p->dests.size()));
  // With a long interval only the ends are told.
  said.clear();
  progress.every_s = 1e9;
  ASSERT_TRUE(verify_plan(*in, *p, 1, progress));
  EXPECT_EQ(said.size(), 2u);
}

}  // namespace
}  // namespace weightcast::plan
