// Which projections a trainer can write straight into its receivers' GPU tensors (ipc backend):
// those whose writes map their staging range linearly onto one dest tensor, and their scales
// onto the scale tensor. Checked on the shipped plans against the writes themselves.
#include <gtest/gtest.h>

#include <map>

#include "weightcast/exec/executor.h"
#include "weightcast/plan/planner.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::exec {
namespace {

struct Count {
  size_t projects = 0, in_place = 0, single = 0;  // single: written to one receiver's tensors
};

Count check(const std::string& name, int64_t scale) {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + name + "/";
  auto in = spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json",
                              {scale});
  EXPECT_TRUE(in) << in.status().message();
  if (!in) return {};
  auto p = plan::make_plan(*in, {});
  EXPECT_TRUE(p) << p.status().message();
  if (!p) return {};
  Count c;
  for (uint32_t rank = 0; rank < p->senders.size(); ++rank) {
    const auto at = TrainerExecutor::in_place_for_tests(*p, rank);
    EXPECT_EQ(at.size(), p->projects.size());
    // Bytes of each in-place projection's output and scales its writes cover, and where.
    std::map<size_t, uint64_t> out_bytes, scale_bytes;
    std::map<size_t, bool> fans_out;  // written to other dests too (replicas, replicated ranks)
    for (const plan::Write& w : p->writes) {
      if (w.sender != rank || w.project < 0) continue;
      const auto k = static_cast<size_t>(w.project);
      const plan::Project& q = p->projects[k];
      if (w.dest != q.dest && static_cast<int32_t>(w.dest) != q.scale_dest) fans_out[k] = true;
      if (at[k].out_base < 0) continue;
      const bool sc = q.scale_dest >= 0 && w.dest == static_cast<uint32_t>(q.scale_dest);
      const uint64_t start = sc ? q.scale_off : q.staging_off;
      const auto base = static_cast<uint64_t>(sc ? at[k].scale_base : at[k].out_base);
      EXPECT_EQ(w.dst_off, base + (w.src_off - start)) << name << " project " << k;
      (sc ? scale_bytes : out_bytes)[k] += w.len;
    }
    for (size_t k = 0; k < p->projects.size(); ++k) {
      const plan::Project& q = p->projects[k];
      if (q.sender != rank) {
        EXPECT_LT(at[k].out_base, 0) << "another rank's projection " << k;
        continue;
      }
      ++c.projects;
      c.single += !fans_out[k];
      if (at[k].out_base < 0) continue;
      EXPECT_FALSE(fans_out[k]) << name << " project " << k << " is also written elsewhere";
      ++c.in_place;
      EXPECT_EQ(out_bytes[k], q.out_bytes) << name << " project " << k;
      if (q.scale_dest >= 0)
        EXPECT_EQ(scale_bytes[k], static_cast<uint64_t>(q.scale_box.numel()) * 4)
            << name << " project " << k << " scales";
      else
        EXPECT_LT(at[k].scale_base, 0);
    }
  }
  return c;
}

TEST(InPlace, ProjectionsWhoseWritesMapLinearlyQualify) {
  // A projection written to several receivers (replicated attention, replicas) stays in staging;
  // every other one of the shipped layouts lands in one piece of its tensor.
  for (const auto& [name, scale] : {std::pair<const char*, int64_t>{"demo-moe", 1},
                                    {"qwen3-30b-a3b", 8},
                                    {"deepseek-v3", 16}}) {
    const Count c = check(name, scale);
    EXPECT_GT(c.in_place, 0u) << name;
    EXPECT_EQ(c.in_place, c.single) << name;
    if (name != std::string("demo-moe")) {  // its projections each feed one receiver
      EXPECT_LT(c.single, c.projects) << name << ": replicated tensors fan out";
    }
  }
}

}  // namespace
}  // namespace weightcast::exec
