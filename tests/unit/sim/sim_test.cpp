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

TEST(Sim, TheFirstWriteWaitsForTheReceiversArms) {
  // Two senders, one receiver: each makes 3 requests (record, arms, record). Round trips of
  // 100 us: 300 us each; a server at 80 us a request serving both senders' 6: 480 us; each
  // returned arm another 10 us at the server: 500 us.
  Profile f = bare();
  f.ready_rtt_us = 100;
  auto r = simulate(fan_in(2, 1, 1000000), f);  // 2 MB into one ingress: 2 ms
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_NEAR(r->stages.ready_s, 300e-6, 1e-12);
  EXPECT_NEAR(r->predicted_s, 300e-6 + 2e-3, 1e-9);
  f.ready_server_us = 80;
  auto s = simulate(fan_in(2, 1, 1000000), f);
  ASSERT_TRUE(s);
  EXPECT_NEAR(s->stages.ready_s, 480e-6, 1e-12);
  EXPECT_NEAR(s->predicted_s, 480e-6 + 2e-3, 1e-9);
  f.ready_key_us = 10;
  auto k = simulate(fan_in(2, 1, 1000000), f);
  ASSERT_TRUE(k);
  EXPECT_NEAR(k->stages.ready_s, 500e-6, 1e-12);
}

// `senders` senders on one host, each one projection of 1 MB in + 1 MB out feeding one write.
plan::Plan projecting(uint32_t senders) {
  plan::Plan p = fan_in(senders, 0, 0);
  p.dests[0].bytes = senders * 1000000ull;
  for (uint32_t s = 0; s < senders; ++s) {
    p.senders[s].host = "one";
    plan::Project q;
    q.sender = s;
    q.box.nd = 1;
    q.box.hi[0] = 500000;
    q.out_bytes = 1000000;
    p.senders[s].tasks.push_back({plan::Task::Op::kProject, s});
    p.projects.push_back(q);
    plan::Write w;
    w.sender = s;
    w.project = static_cast<int32_t>(s);
    w.len = 1000000;
    w.dst_off = s * 1000000ull;
    p.senders[s].tasks.push_back({plan::Task::Op::kWrite, s});
    p.writes.push_back(w);
  }
  p.receivers[0].host = "other";
  return p;
}

TEST(Sim, CpuProjectionsOfOneHostShareItsCores) {
  Profile f = bare();
  f.nic_gbps = 8000;            // writes: 1 MB at 1 TB/s, 1 us
  f.project_bytes_per_s = 2e9;  // 1 ms a projection
  auto free_cores = simulate(projecting(4), f);
  f.cpu_cores = 2;
  auto two = simulate(projecting(4), f);
  ASSERT_TRUE(free_cores && two) << two.status().message();
  // Unlimited: all four at once (1 ms); two cores: two rounds (2 ms).
  EXPECT_NEAR(free_cores->predicted_s, 1e-3 + 4e-6, 1e-7);
  EXPECT_NEAR(two->predicted_s, 2e-3 + 2e-6, 1e-7);
  // Shards on the GPU: each sender projects on its own GPU, the cores do not matter.
  f.shards_on_gpu = true;
  auto gpu = simulate(projecting(4), f);
  ASSERT_TRUE(gpu);
  EXPECT_NEAR(gpu->predicted_s, free_cores->predicted_s, 1e-12);
}

TEST(Sim, OnLoopbackCopiesAndProjectionsShareTheCores) {
  // One core: the projection (1 ms) and then the write's copy through the host path (1 MB at
  // 1 GB/s: 1 ms) run one after the other on it; two senders: 4 ms of core work.
  plan::Plan p = projecting(2);
  p.receivers[0].host = "one";
  Profile f = bare();
  f.nic_gbps = 8000;
  f.project_bytes_per_s = 2e9;
  f.cpu_cores = 1;
  f.host_bytes_per_s = 1e9;
  f.host_path_on_cores = true;
  auto r = simulate(p, f);
  ASSERT_TRUE(r) << r.status().message();
  EXPECT_NEAR(r->predicted_s, 4e-3, 1e-5);
  // Without the coupling the host path is a lane of its own beside the core: 3 ms.
  f.host_path_on_cores = false;
  auto lane = simulate(p, f);
  ASSERT_TRUE(lane);
  EXPECT_NEAR(lane->predicted_s, 3e-3, 1e-5);
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
