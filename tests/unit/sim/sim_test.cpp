// The simulator on plans whose answer can be worked out by hand, and its invariants.
#include "weightcast/sim/sim.h"

#include <gtest/gtest.h>

#include "weightcast/plan/planner.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::sim {
namespace {

// A profile where only what a test sets costs time.
Profile bare() {
  Profile f;
  f.name = "test";
  f.nic_gbps = 8;  // 1 GB/s
  f.write_us = 0;
  f.project_bytes_per_s = 1e15;
  f.shards_on_gpu = f.tensors_on_gpu = false;
  return f;
}

// `senders` senders writing `writes` writes of `len` bytes each to receiver 0 (direct writes).
plan::Plan fan_in(uint32_t senders, uint32_t writes, uint64_t len) {
  plan::Plan p;
  p.dests.push_back({0, 0, false, {}, core::DType::kBF16, len * writes * senders});
  p.receivers.push_back({});
  p.receivers[0].expected_imms = {writes * senders};
  for (uint32_t s = 0; s < senders; ++s) {
    plan::Sender x;
    x.rank = s;
    x.host = "h" + std::to_string(s);
    x.nic_gbps = 8;
    for (uint32_t i = 0; i < writes; ++i) {
      plan::Write w;
      w.sender = s;
      w.dest = 0;
      w.src_param = 0;
      w.len = len;
      w.dst_off = (uint64_t{s} * writes + i) * len;
      x.tasks.push_back({plan::Task::Op::kWrite, static_cast<uint32_t>(p.writes.size())});
      p.writes.push_back(w);
    }
    p.senders.push_back(x);
  }
  return p;
}

TEST(Sim, OneSenderOneNicIsBytesOverRatePlusWriteCosts) {
  Profile f = bare();
  f.write_us = 10;
  auto r = simulate(fan_in(1, 100, 1 << 20), f);
  ASSERT_TRUE(r) << r.status().message();
  // 100 MiB at 1 GB/s, plus 100 x 10 us.
  EXPECT_NEAR(r->predicted_s, 100.0 * (1 << 20) / 1e9 + 100 * 10e-6, 1e-9);
  EXPECT_NEAR(r->floor_s, 100.0 * (1 << 20) / 1e9, 1e-9);
  EXPECT_EQ(r->writes, 100u);
}

TEST(Sim, TwoSendersShareOneReceiversIngress) {
  Profile f = bare();
  auto one = simulate(fan_in(1, 64, 1 << 20), f);
  auto two = simulate(fan_in(2, 64, 1 << 20), f);
  ASSERT_TRUE(one && two);
  // Twice the bytes through the same ingress: twice the time, though each sender's NIC is free.
  EXPECT_NEAR(two->predicted_s, 2 * one->predicted_s, 1e-9);
  EXPECT_NEAR(two->receiver_busy_s, two->predicted_s, 1e-9);
}

TEST(Sim, ARingThatForcesWaits) {
  // One sender, two projections into the same staging slot, each feeding one write of 1 MB:
  // the second projection waits for the first write (1 ms at 1 GB/s), then projects (1 ms).
  plan::Plan p = fan_in(1, 0, 0);
  p.dests[0].bytes = 2000000;
  p.senders[0].tasks.clear();
  for (uint32_t i = 0; i < 2; ++i) {
    plan::Project q;
    q.dest = 0;
    q.box.nd = 1;  // 500000 elements, read as 2 bytes each: 1 MB in
    q.box.hi[0] = 500000;
    q.staging_off = 0;
    q.out_bytes = 1000000;
    p.senders[0].tasks.push_back({plan::Task::Op::kProject, i});
    p.projects.push_back(q);
    plan::Write w;
    w.dest = 0;
    w.project = static_cast<int32_t>(i);
    w.len = 1000000;
    w.dst_off = i * 1000000ull;
    p.senders[0].tasks.push_back({plan::Task::Op::kWrite, i});
    p.writes.push_back(w);
  }
  Profile f = bare();
  f.project_bytes_per_s = 2e9;  // 1 MB in + 1 MB out: 1 ms a projection
  auto r = simulate(p, f);
  ASSERT_TRUE(r) << r.status().message();
  // project 1 ms, write 1 ms (ring wait 1 ms), project 1 ms, write 1 ms.
  EXPECT_NEAR(r->predicted_s, 4e-3, 1e-9);
  EXPECT_NEAR(r->stages.ring_wait_s, 1e-3, 1e-9);
  EXPECT_NEAR(r->stages.project_s, 2e-3, 1e-9);
  // With two slots the second projection overlaps the first write.
  p.projects[1].staging_off = 1000000;
  auto r2 = simulate(p, f);
  ASSERT_TRUE(r2);
  EXPECT_NEAR(r2->predicted_s, 3e-3, 1e-9);
  EXPECT_EQ(r2->stages.ring_wait_s, 0);
}

// Invariants on a real plan (demo-moe, and Qwen3-30B-A3B at full size).
plan::Plan real(const std::string& name) {
  const std::string d = std::string(WC_SOURCE_DIR) + "/configs/" + name + "/";
  auto in = spec::load_inputs(d + "trainer.json", d + "inference.json", d + "topology.json");
  EXPECT_TRUE(in) << in.status().message();
  auto p = plan::make_plan(*in, {});
  EXPECT_TRUE(p) << p.status().message();
  return std::move(p).value();
}

TEST(Sim, NeverUnderTheFloorNeverFasterWithMoreBytesNeverSlowerWithFasterNics) {
  for (const char* name : {"demo-moe", "qwen3-30b-a3b"}) {
    plan::Plan p = real(name);
    auto prof = load_profile(std::string(WC_SOURCE_DIR) + "/configs/profiles/cx7-h100.json");
    ASSERT_TRUE(prof) << prof.status().message();
    auto base = simulate(p, *prof);
    ASSERT_TRUE(base) << base.status().message();
    EXPECT_GE(base->predicted_s, base->floor_s) << name;
    EXPECT_GT(base->floor_s, 0) << name;
    Profile fast = *prof;
    fast.nic_gbps = 800;
    auto f2 = simulate(p, fast);
    ASSERT_TRUE(f2);
    EXPECT_LE(f2->predicted_s, base->predicted_s + 1e-12) << name;
    plan::Plan more = p;
    for (plan::Write& w : more.writes) w.len += w.len / 4;
    auto m = simulate(more, *prof);
    ASSERT_TRUE(m);
    EXPECT_GE(m->predicted_s, base->predicted_s - 1e-12) << name;
  }
}

TEST(Sim, ProfilesNameTheBadField) {
  auto bad = parse_profile(R"({"format": "weightcast.profile/v1", "nic_efficiency": 2})", "x.json");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("nic_efficiency"), std::string::npos);
  auto unknown = parse_profile(R"({"format": "weightcast.profile/v1", "nic_gpbs": 2})", "x.json");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.status().message().find("nic_gpbs: unknown field"), std::string::npos);
  auto type = parse_profile(R"({"format": "weightcast.profile/v1", "write_us": "1"})", "x.json");
  ASSERT_FALSE(type);
  EXPECT_NE(type.status().message().find("write_us: expected a number"), std::string::npos);
  Profile f = bare();
  auto back = parse_profile(profile_json(f), "round trip");
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_EQ(back->nic_gbps, f.nic_gbps);
  for (const char* p : {"cx7-h100", "cx7-h200", "efa-h100"}) {
    auto s = load_profile(std::string(WC_SOURCE_DIR) + "/configs/profiles/" + p + ".json");
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_GE(s->sources.size(), 8u) << p;
  }
}

}  // namespace
}  // namespace weightcast::sim
