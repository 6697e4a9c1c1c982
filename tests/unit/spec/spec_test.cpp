// Spec parsing: a good file parses to the expected model, and every kind of bad input gives an
// error that names the JSON path and what was expected.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../test_specs.h"
#include "weightcast/plan/planner.h"
#include "weightcast/spec/layout.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::spec {
namespace {

using nlohmann::json;
using testing::tiny_inference;
using testing::tiny_topology;
using testing::tiny_trainer;

TEST(Spec, ParsesTinySpecs) {
  auto in = make_inputs(tiny_trainer(), tiny_inference(), tiny_topology(), {}, {"t", "i", "c"});
  ASSERT_TRUE(in) << in.status().message();
  const TrainerSpec& t = in->trainer;
  ASSERT_EQ(t.params.size(), 6u);
  EXPECT_EQ(t.params[3].name, "layer.0.w");
  EXPECT_EQ(t.params[5].placement.at("pp").str(), "O(1)");  // {i/2} with i = 2
  EXPECT_EQ(t.mesh.size(), 4);
  EXPECT_EQ(t.mesh.devices[3].host, "t0");
  EXPECT_EQ(t.mesh.devices[3].gpu, 3);
  EXPECT_EQ(t.mesh.coord(3, 0), 1);
  const InferenceSpec& inf = in->inference;
  ASSERT_EQ(inf.replicas.size(), 2u);
  EXPECT_EQ(inf.replicas[1].devices[0].gpu, 2);  // replicas take consecutive GPUs
  const DestParam& ab = inf.params[0];
  ASSERT_EQ(ab.parts.size(), 2u);
  EXPECT_EQ(ab.concat_dim, 0);
  EXPECT_TRUE(inf.params[1].parts[0].transpose);
  ASSERT_TRUE(inf.params[2].quant);
  EXPECT_EQ(inf.params[2].quant->scale_name, "aq.scale");
  EXPECT_EQ(in->topology.hosts[0].nics_per_gpu, 2);
}

TEST(Spec, ScaleDividesNamedDimsAndBlocks) {
  json t = tiny_trainer(), i = tiny_inference();
  auto in = make_inputs(t, i, tiny_topology(), {2}, {"t", "i", "c"});
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->trainer.params[0].shape.str(), "[4, 3]");  // named dims halve
  EXPECT_EQ(in->trainer.params[1].shape.str(), "[2, 3]");
  EXPECT_EQ(in->trainer.params[3].shape.str(), "[3, 4]");  // literals stay: they are layout
  EXPECT_EQ(in->inference.params[2].quant->block_rows, 1);
  auto bad = make_inputs(t, i, tiny_topology(), {4}, {"t", "i", "c"});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("trainer.dims.h: 6 is not divisible by --scale 4"),
            std::string::npos)
      << bad.status().message();
}

TEST(Layout, EvenSplitsFlattenEveryEvenAxisOfADimFirstRanksFirst) {
  Mesh m;
  m.axes = {{"dp", 3}, {"fsdp", 2}, {"tp", 2}};
  m.devices.resize(12);
  // dp and tp both E(0): 10 rows over the 6 (dp, tp) ranks flattened, dp outer: 2,2,2,2,1,1;
  // fsdp replicates.
  PlacementMap pm{{"dp", {Placement::Kind::kEven, 0}}, {"tp", {Placement::Kind::kEven, 0}}};
  const core::Shape s = core::Shape::of({10, 4});
  const std::vector<std::string> want{"[0:2, 0:4]", "[2:4, 0:4]", "[4:6, 0:4]",
                                      "[6:8, 0:4]", "[8:9, 0:4]", "[9:10, 0:4]"};
  for (int64_t rank = 0; rank < 12; ++rank) {
    const int64_t dp = rank / 4, tp = rank % 2;
    EXPECT_EQ(local_box(s, pm, m, rank)->str(), want[static_cast<size_t>(dp * 2 + tp)]) << rank;
  }
  // Divisible: the same as nested S(0).
  PlacementMap sm{{"dp", {Placement::Kind::kShard, 0}}, {"tp", {Placement::Kind::kShard, 0}}};
  const core::Shape s12 = core::Shape::of({12, 4});
  for (int64_t rank = 0; rank < 12; ++rank)
    EXPECT_EQ(local_box(s12, pm, m, rank)->str(), local_box(s12, sm, m, rank)->str()) << rank;
  EXPECT_EQ((Placement{Placement::Kind::kEven, 1}).str(), "E(1)");
}

TEST(Layout, NestedShardsAndOwners) {
  Mesh m;
  m.axes = {{"ep", 2}, {"fsdp", 3}};
  m.devices.resize(6);
  PlacementMap pm{{"ep", {Placement::Kind::kShard, 0}}, {"fsdp", {Placement::Kind::kShard, 0}}};
  const core::Shape s = core::Shape::of({10, 4});
  // ep splits 10 into 5+5; fsdp splits each 5 into 2+2+1 (torch.chunk of the ep shard).
  EXPECT_EQ(local_box(s, pm, m, 0)->str(), "[0:2, 0:4]");
  EXPECT_EQ(local_box(s, pm, m, 2)->str(), "[4:5, 0:4]");
  EXPECT_EQ(local_box(s, pm, m, 5)->str(), "[9:10, 0:4]");
  PlacementMap own{{"ep", {Placement::Kind::kOwner, 1}}, {"fsdp", {Placement::Kind::kShard, 1}}};
  EXPECT_FALSE(local_box(s, own, m, 1));
  EXPECT_EQ(local_box(s, own, m, 4)->str(), "[0:10, 2:4]");
}

TEST(Layout, FusedConcatShardsEachPart) {
  auto in = make_inputs(tiny_trainer(), tiny_inference(), tiny_topology(), {}, {"t", "i", "c"});
  ASSERT_TRUE(in);
  // ab = concat(a[8,6], b[4,6]) with TP2 on dim 0: rank 1 holds a[4:8] then b[2:4].
  auto dl = dest_local(in->inference.params[0], in->inference.replicas[0], 1);
  ASSERT_TRUE(dl);
  EXPECT_EQ(dl->shape.str(), "[6, 6]");
  EXPECT_EQ(dl->parts[0].global.str(), "[4:8, 0:6]");
  EXPECT_EQ(dl->parts[1].global.str(), "[2:4, 0:6]");
  EXPECT_EQ(dl->parts[1].offset, 4);
  Quant q{4, 4, "s"};
  EXPECT_EQ(scale_shape(core::Shape::of({2, 9, 8}), q).str(), "[2, 3, 2]");
}

// Each case edits valid specs and names the error it must produce.
struct BadCase {
  const char* name;
  void (*edit)(json& t, json& i, json& c);
  const char* expect;
};

const BadCase kBadCases[] = {
    {"missing field", [](json& t, json&, json&) { t["params"][0].erase("dtype"); },
     "trainer.params[0].dtype: missing required field"},
    {"unknown dtype", [](json& t, json&, json&) { t["params"][1]["dtype"] = "fp4"; },
     "trainer.params[1].dtype: unknown dtype 'fp4'"},
    {"wrong rank count",
     [](json& t, json&, json&) {
       t["mesh"]["devices"] = json::array({{{"host", "t0"}, {"gpu", 0}}});
     },
     "trainer.mesh.devices: expected 4 devices (one per mesh rank), got 1"},
    {"shard of a missing dim",
     [](json& t, json&, json&) { t["params"][0]["placement"]["fsdp"] = "S(2)"; },
     "trainer.params[0].placement.fsdp: shard of dim 2 that does not exist (tensor has 2 dims)"},
    {"unknown axis", [](json& t, json&, json&) { t["params"][0]["placement"]["tp"] = "S(0)"; },
     "trainer.params[0].placement.tp: mesh has no axis 'tp'"},
    {"owner nobody holds",
     [](json& t, json&, json&) { t["params"][2]["placement"]["pp"] = "O(2)"; },
     "owner coordinate 2 outside axis 'pp' of size 2: no rank would hold this tensor"},
    {"duplicate name", [](json& t, json&, json&) { t["params"][1]["name"] = "a"; },
     "trainer.params[1].name: duplicate parameter name 'a'"},
    {"duplicate from pattern",
     [](json& t, json&, json&) {
       t["params"][3]["for"]["i"] = json::array({0, 3});
       t["params"][3]["name"] = "a";
     },
     "duplicate parameter name 'a'"},
    {"mapped shape mismatch",
     [](json&, json& i, json&) {
       i["params"][0]["shape"] = json::array({11, "h"});
     },
     "inference.params[0].shape: expected [12, 6] after mapping from a, b, got [11, 6]"},
    {"concat of incompatible",
     [](json&, json& i, json&) { i["params"][0]["from"]["concat"][1] = "c"; },
     "inference.params[0].from.concat[1]: source 'c' has shape [6, 5], which cannot concat with "
     "[8, 6] along dim 0"},
    {"unknown source", [](json&, json& i, json&) { i["params"][1]["from"]["transpose"] = "zz"; },
     "inference.params[1].from.transpose: no trainer parameter named 'zz'"},
    {"quant needs fp8", [](json&, json& i, json&) { i["params"][2]["dtype"] = "bf16"; },
     "inference.params[2].quant: block quantization needs an fp8 dtype, got bf16"},
    {"pattern unknown var", [](json&, json& i, json&) { i["params"][3]["from"] = "layer.{j}.w"; },
     "inference.params[3].from: pattern '{j}' uses unknown variable 'j'"},
    {"typo in field",
     [](json& t, json&, json&) { t["params"][0]["shpae"] = t["params"][0]["shape"]; },
     "trainer.params[0].shpae: unknown field"},
    {"wrong type", [](json& t, json&, json&) { t["mesh"]["axes"][0]["size"] = "2"; },
     "trainer.mesh.axes[0].size: expected an integer, got a string"},
    {"bad format", [](json& t, json&, json&) { t["format"] = "weightcast.spec/v9"; },
     "trainer.format: expected \"weightcast.spec/v1\", got \"weightcast.spec/v9\""},
    {"host not in topology", [](json&, json&, json& c) { c["hosts"][1]["name"] = "x{h}"; },
     "inference replica 0 rank 0 (I: inference.replicas[0]) runs on host 'i0', which C "
     "(topology.hosts) does not list"},
    {"negative gather cost", [](json&, json&, json& c) { c["hosts"][0]["gather_us"] = -2; },
     "topology.hosts[0].gather_us: expected a number in [0, 1000000], got -2"},
    {"too few GPUs", [](json&, json&, json& c) { c["hosts"][1]["gpus"] = 3; },
     "inference replica 1 rank 1 (I: inference.replicas[1]) runs on i0 GPU 3, but C gives that "
     "host 3 GPUs"},
    {"GPU used twice", [](json&, json& i, json&) { i["replicas"]["devices"]["host"] = "t{h}"; },
     "trainer rank 0 (T: trainer.mesh.devices) and inference replica 0 rank 0 (I: "
     "inference.replicas[0]) both run on t0 GPU 0"},
    {"colocated must be a boolean", [](json&, json&, json& c) { c["hosts"][0]["colocated"] = 1; },
     "topology.hosts[0].colocated: expected true or false, got 1"},
    {"bad placement string",
     [](json& t, json&, json&) { t["params"][0]["placement"]["fsdp"] = "Shard(x)"; },
     "trainer.params[0].placement.fsdp: bad placement 'Shard(x)': expected a non-negative integer "
     "argument"},
    {"empty params", [](json& t, json&, json&) { t["params"] = json::array(); },
     "trainer.params: expected at least one parameter"},
    {"negative extent", [](json& t, json&, json&) { t["params"][1]["shape"][0] = -4; },
     "trainer.params[1].shape[0]: expected an integer in [1, 1099511627776], got -4"},
};

TEST(Spec, BadInputsNameThePathAndTheProblem) {
  for (const BadCase& c : kBadCases) {
    json t = tiny_trainer(), i = tiny_inference(), topo = tiny_topology();
    c.edit(t, i, topo);
    auto in = make_inputs(t, i, topo, {}, {"T", "I", "C"});
    ASSERT_FALSE(in) << c.name << ": accepted";
    EXPECT_EQ(in.status().code(), Code::kInvalidArgument) << c.name;
    EXPECT_NE(in.status().message().find(c.expect), std::string::npos)
        << c.name << "\n  got:    " << in.status().message() << "\n  wanted: " << c.expect;
  }
}

// Small hostile specs: each is refused naming the path, using under a second of CPU and under
// 256 MiB (measured in a child process, so nothing else the test binary did counts).
TEST(Spec, ResourceBoundsRefuseSmallHostileSpecs) {
  const std::vector<BadCase> cases = {
      {"a for of 4M entries",
       [](json& t, json&, json&) {
         t["params"][3]["for"]["i"] = json::array({0, 4000000});
       },
       "trainer.params[3]: 4000000 more parameters would pass the limit of 262144"},
      {"4M entries over two fors",
       [](json& t, json&, json&) {
         t["params"][3]["for"] = {{"i", json::array({0, 2000})}, {"j", json::array({0, 2000})}};
         t["params"][3]["name"] = "layer.{i}.{j}.w";
       },
       "more parameters would pass the limit"},
      {"a 2^40 x 2^23+1 tensor",
       [](json& t, json&, json&) {
         t["params"][0]["shape"] = json::array({int64_t{1} << 40, (int64_t{1} << 23) + 1});
       },
       "trainer.params[0].shape: a tensor of shape [1099511627776, 8388609] is larger than the "
       "spec limit"},
      {"a 2^40 x 2^40 tensor",
       [](json& t, json&, json&) {
         t["params"][0]["shape"] = json::array({int64_t{1} << 40, int64_t{1} << 40});
       },
       "is larger than the spec limit"},
      {"an extent that overflows int64",
       [](json& t, json&, json&) { t["params"][0]["shape"][0] = "4294967296*4294967295"; },
       "trainer.params[0].shape[0]: extent '4294967296*4294967295' is larger than 2^40"},
      {"tensors that sum past 64 TiB",
       [](json& t, json&, json&) {
         t["params"][3]["shape"] = json::array({int64_t{1} << 40});
         t["params"][3]["for"]["i"] = json::array({0, 40});
       },
       "trainer.params[3]: the spec's tensors pass the limit of 70368744177664 bytes"},
      {"a trainer parameter nothing consumes",
       [](json&, json& i, json&) { i["params"][1]["from"]["transpose"] = "a"; },
       "T: 1 trainer parameter(s) reach no inference tensor: 'c' (trainer.params[2])"},
      {"a host template without {h}",
       [](json& t, json&, json&) {
         t["mesh"]["devices"]["host"] = "t0";
         t["mesh"]["devices"]["gpus_per_host"] = 2;
       },
       "trainer.mesh.devices.host: 't0' names one host, but ranks 0 to 3 need 2 GPUs per host"},
  };
  for (const BadCase& c : cases) {
    json t = tiny_trainer(), i = tiny_inference(), topo = tiny_topology();
    if (std::string(c.name) == "a trainer parameter nothing consumes")
      i["params"][1]["shape"] = json::array({"h", "n"});  // still a valid transpose, of a
    c.edit(t, i, topo);
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    if (pid == 0) {
      auto in = make_inputs(t, i, topo, {}, {"T", "I", "C"});
      const std::string m = in ? "accepted" : in.status().message();
      (void)!write(fds[1], m.data(), m.size());
      _exit(in ? 1 : (in.status().code() == Code::kInvalidArgument ? 0 : 3));
    }
    close(fds[1]);
    std::string got;
    char buf[512];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
      got.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    rusage ru{};
    ASSERT_EQ(wait4(pid, &status, 0, &ru), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << c.name << ": " << got;
    EXPECT_NE(got.find(c.expect), std::string::npos)
        << c.name << "\n  got:    " << got << "\n  wanted: " << c.expect;
    const double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    EXPECT_LT(cpu, 1.0) << c.name;
    EXPECT_LT(ru.ru_maxrss, 256 * 1024) << c.name << " (KiB)";
  }
  // The limits are options: raised, a deliberate 300k-parameter spec parses.
  json t = tiny_trainer(), i = tiny_inference();
  t["params"][3]["for"]["i"] = json::array({0, 300000});
  t["params"][3]["placement"] = {{"fsdp", "S(0)"}};
  ParseOptions big;
  big.max_params = 1 << 20;
  big.allow_unused = true;
  auto in = make_inputs(t, i, tiny_topology(), big, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->trainer.params.size(), 300003u);
}

// DTensor's own placement strings, as print(dtensor.placements) shows them, mean what ours do.
// A host marked colocated lets a trainer rank and an inference rank share a GPU (verl's hybrid
// engine); without the mark they may not, and the error says how to allow it.
TEST(Spec, ColocatedHostsLetTheTwoSidesShareGpus) {
  json t = tiny_trainer(), i = tiny_inference(), c = tiny_topology();
  i["replicas"]["devices"]["host"] = "t{h}";  // inference on the trainers' GPUs
  auto refused = make_inputs(t, i, c, {}, {"T", "I", "C"});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find("\"colocated\": true"), std::string::npos)
      << refused.status().message();
  c["hosts"][0]["colocated"] = true;
  auto in = make_inputs(t, i, c, {}, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->inference.replicas[0].devices[0].host, in->trainer.mesh.devices[0].host);
  EXPECT_EQ(in->inference.replicas[0].devices[0].gpu, in->trainer.mesh.devices[0].gpu);
  auto p = plan::make_plan(*in, {});
  ASSERT_TRUE(p) << p.status().message();
}

TEST(Spec, DTensorPlacementStringsAreAccepted) {
  json t = tiny_trainer();
  t["params"][0]["placement"] = {{"fsdp", "Shard(dim=0)"}, {"pp", "O(0)"}};
  t["params"][1]["placement"] = {{"fsdp", "Shard(dim = 0)"}, {"pp", "O(0)"}};
  auto in = make_inputs(t, tiny_inference(), tiny_topology(), {}, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->trainer.params[0].placement.at("fsdp").str(), "S(0)");
  EXPECT_EQ(in->trainer.params[1].placement.at("fsdp").str(), "S(0)");
  t["params"][2]["placement"]["fsdp"] = "Replicate()";
  in = make_inputs(t, tiny_inference(), tiny_topology(), {}, {"T", "I", "C"});
  ASSERT_TRUE(in) << in.status().message();
  EXPECT_EQ(in->trainer.params[2].placement.count("fsdp")
                ? in->trainer.params[2].placement.at("fsdp").str()
                : "R",
            "R");
  t["params"][2]["placement"]["fsdp"] = "_StridedShard(dim=0, sf=2)";
  in = make_inputs(t, tiny_inference(), tiny_topology(), {}, {"T", "I", "C"});
  ASSERT_FALSE(in);
  EXPECT_NE(
      in.status().message().find("trainer.params[2].placement.fsdp: _StridedShard of dim 0 "
                                 "with sf=2, but the other axes shard that dim into 1 pieces"),
      std::string::npos)
      << in.status().message();
}

TEST(Spec, FileErrorsNameTheFile) {
  auto r = load_inputs("/nonexistent/t.json", "i.json", "c.json");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().message(), "/nonexistent/t.json: cannot open file");
}

}  // namespace
}  // namespace weightcast::spec
