// Property test: random meshes, placements (uneven and empty shards too), pipeline owners,
// fused concats, transposes, casts, FP8 block quantization, replicas, NVLink domains and planner
// limits. Every plan must verify byte-exact against the reference.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"

namespace weightcast::plan {
namespace {

using nlohmann::json;

struct Gen {
  std::mt19937 rng;
  explicit Gen(uint32_t seed) : rng(seed) {}
  int64_t pick(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng); }

  json placement(const std::vector<std::pair<std::string, int64_t>>& axes, int nd) {
    json p = json::object();
    for (const auto& [name, size] : axes) {
      const int64_t r = pick(0, 99);
      if (r < 45) continue;
      if (r < 85)
        p[name] = "S(" + std::to_string(pick(0, nd - 1)) + ")";
      else
        p[name] = "O(" + std::to_string(pick(0, size - 1)) + ")";
    }
    return p;
  }
};

struct Case {
  json trainer, inference, topology;
  Options opts;
};

Case random_case(uint32_t seed) {
  Gen g(seed);
  Case c;
  // Trainer mesh and devices.
  std::vector<std::pair<std::string, int64_t>> taxes;
  const int naxes = static_cast<int>(g.pick(1, 3));
  int64_t tsize = 1;
  for (int a = 0; a < naxes; ++a) {
    taxes.push_back({"a" + std::to_string(a), g.pick(1, 3)});
    tsize *= taxes.back().second;
  }
  const int64_t tgph = g.pick(1, 4);
  json tmesh = {{"axes", json::array()}, {"devices", {{"host", "t{h}"}, {"gpus_per_host", tgph}}}};
  for (auto& [n, s] : taxes) tmesh["axes"].push_back({{"name", n}, {"size", s}});
  // Trainer params in groups that share all dims but one, so concats are possible.
  const char* dts[] = {"bf16", "fp32", "fp16"};
  json tparams = json::array();
  struct Group {
    std::vector<std::string> names;
    std::vector<std::vector<int64_t>> shapes;
    int dim;
  };
  std::vector<Group> groups;
  const int ngroups = static_cast<int>(g.pick(1, 3));
  for (int gi = 0; gi < ngroups; ++gi) {
    Group grp;
    const int nd = static_cast<int>(g.pick(1, 3));
    std::vector<int64_t> base;
    for (int d = 0; d < nd; ++d) base.push_back(g.pick(1, 10));
    grp.dim = static_cast<int>(g.pick(0, nd - 1));
    const std::string dt = dts[g.pick(0, 2)];
    const int n = static_cast<int>(g.pick(1, 3));
    for (int k = 0; k < n; ++k) {
      std::vector<int64_t> s = base;
      s[grp.dim] = g.pick(1, 9);
      const std::string name = "g" + std::to_string(gi) + "p" + std::to_string(k);
      tparams.push_back(
          {{"name", name}, {"shape", s}, {"dtype", dt}, {"placement", g.placement(taxes, nd)}});
      grp.names.push_back(name);
      grp.shapes.push_back(s);
    }
    groups.push_back(grp);
  }
  c.trainer = {
      {"format", "weightcast.spec/v1"}, {"role", "trainer"}, {"mesh", tmesh}, {"params", tparams}};

  // Inference replicas share axis names; sizes differ per replica.
  const int nrep = static_cast<int>(g.pick(1, 3));
  const int iaxes = static_cast<int>(g.pick(1, 2));
  const int64_t igph = g.pick(1, 4);
  json reps = json::array();
  int64_t isize = 0, min_size = 99;
  for (int r = 0; r < nrep; ++r) {
    json m = {{"axes", json::array()}, {"devices", json::array()}};
    int64_t n = 1;
    for (int a = 0; a < iaxes; ++a) {
      const int64_t s = g.pick(1, 3);
      min_size = std::min(min_size, s);
      m["axes"].push_back({{"name", "b" + std::to_string(a)}, {"size", s}});
      n *= s;
    }
    for (int64_t k = 0; k < n; ++k, ++isize)
      m["devices"].push_back({{"host", "i" + std::to_string(isize / igph)}, {"gpu", isize % igph}});
    reps.push_back(m);
  }
  std::vector<std::pair<std::string, int64_t>> iax;
  for (int a = 0; a < iaxes; ++a) iax.push_back({"b" + std::to_string(a), min_size});
  json iparams = json::array();
  const int ndest = static_cast<int>(g.pick(1, 4));
  for (int k = 0; k < ndest; ++k) {
    const Group& grp = groups[g.pick(0, ngroups - 1)];
    const int nd = static_cast<int>(grp.shapes[0].size());
    json d = {{"name", "d" + std::to_string(k)}};
    std::vector<int64_t> shape;
    const int64_t kind = g.pick(0, 2);
    if (kind == 1 && grp.names.size() > 1) {  // concat of the group's members (a random subset)
      json list = json::array();
      for (size_t m = 0; m < grp.names.size(); ++m)
        if (list.empty() || g.chance(0.7)) {
          list.push_back(grp.names[m]);
          if (shape.empty())
            shape = grp.shapes[m];
          else
            shape[grp.dim] += grp.shapes[m][grp.dim];
        }
      d["from"] = {{"concat", list}, {"dim", grp.dim}};
    } else if (kind == 2 && nd >= 2) {
      const size_t m = static_cast<size_t>(g.pick(0, static_cast<int64_t>(grp.names.size()) - 1));
      d["from"] = {{"transpose", grp.names[m]}};
      shape = grp.shapes[m];
      std::swap(shape[nd - 1], shape[nd - 2]);
    } else {
      const size_t m = static_cast<size_t>(g.pick(0, static_cast<int64_t>(grp.names.size()) - 1));
      d["from"] = grp.names[m];
      shape = grp.shapes[m];
    }
    d["shape"] = shape;
    const int64_t dt = g.pick(0, 9);
    if (dt < 3) {
      d["dtype"] = dts[dt];
    } else if (dt < 8 && nd >= 2) {
      d["dtype"] = g.chance(0.8) ? "fp8_e4m3" : "fp8_e5m2";
      d["quant"] = {{"block", {g.pick(1, 4), g.pick(1, 4)}},
                    {"scale", "d" + std::to_string(k) + ".scale"}};
    } else {
      d["dtype"] = "fp8_e4m3";  // plain saturating cast
    }
    d["placement"] = g.placement(iax, nd);
    iparams.push_back(d);
  }
  c.inference = {{"format", "weightcast.spec/v1"},
                 {"role", "inference"},
                 {"replicas", reps},
                 {"params", iparams}};

  // Topology: hosts paired into NVLink domains sometimes, so gathers must respect domains.
  json hosts = json::array();
  const bool pairs = g.chance(0.5);
  hosts.push_back({{"name", "t{h}"},
                   {"for", {{"h", {0, (tsize + tgph - 1) / tgph}}}},
                   {"gpus", tgph},
                   {"nics_per_gpu", g.pick(1, 2)},
                   {"nvlink_domain", pairs ? "d{h/2}" : "t{h}"}});
  hosts.push_back({{"name", "i{h}"},
                   {"for", {{"h", {0, (isize + igph - 1) / igph}}}},
                   {"gpus", igph},
                   {"nics_per_gpu", g.pick(1, 3)}});
  c.topology = {{"format", "weightcast.topology/v1"}, {"hosts", hosts}};

  if (g.chance(0.5)) c.opts.max_write_bytes = static_cast<uint64_t>(g.pick(1, 64));
  if (g.chance(0.5)) c.opts.max_unit_bytes = static_cast<uint64_t>(g.pick(16, 256));
  const int64_t cost = g.pick(0, 2);
  c.opts.write_cost_us = cost == 0 ? 0.0 : cost == 1 ? 2.0 : 1e6;  // never, default, always pack
  c.opts.staging_watermark = 1 << 20;
  return c;
}

TEST(Property, RandomLayoutsVerify) {
  int planned = 0, with_gathers = 0, with_quant = 0;
  const char* only = std::getenv("WC_PROPERTY_SEED");  // reproduce one case; writes its specs
  for (uint32_t seed = 1; seed <= 2000; ++seed) {
    if (only && seed != static_cast<uint32_t>(std::atoi(only))) continue;
    const Case c = random_case(seed);
    if (only) {
      std::ofstream("property_trainer.json") << c.trainer.dump(1);
      std::ofstream("property_inference.json") << c.inference.dump(1);
      std::ofstream("property_topology.json") << c.topology.dump(1);
    }
    spec::ParseOptions opts;
    opts.allow_unused = true;  // random layouts need not consume every trainer parameter
    auto in = spec::make_inputs(c.trainer, c.inference, c.topology, opts, {"t", "i", "c"});
    ASSERT_TRUE(in) << "seed " << seed << ": " << in.status().message() << "\n"
                    << c.trainer.dump() << "\n"
                    << c.inference.dump();
    auto p = make_plan(*in, c.opts);
    ASSERT_TRUE(p) << "seed " << seed << ": " << p.status().message();
    auto v = verify_plan(*in, *p);
    ASSERT_TRUE(v) << "seed " << seed << ": " << v.status().message()
                   << "\ntrainer: " << c.trainer.dump() << "\ninference: " << c.inference.dump()
                   << "\ntopology: " << c.topology.dump();
    ++planned;
    with_gathers += !p->gathers.empty();
    for (const DestTensor& d : p->dests) with_quant += d.scale;
  }
  if (only) return;
  EXPECT_EQ(planned, 2000);
  // The generator must actually reach the interesting paths.
  EXPECT_GT(with_gathers, 100);
  EXPECT_GT(with_quant, 100);
}

}  // namespace
}  // namespace weightcast::plan
