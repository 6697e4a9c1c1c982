// What the report costs, link by link: gathers run on the host collective (their pieces load the
// senders' links, roots take them in at their link rate), and plans for the ipc backend cost
// same-host links at the host's nvlink_gbps. Expected times are computed here from the plan.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan {
namespace {

spec::Inputs demo() {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/demo-moe/";
  auto in = spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json");
  EXPECT_TRUE(in) << in.status().message();
  return std::move(in).value();
}

// Bytes each sender sends as gather pieces: its pieces' elements at the gather's element size.
std::vector<double> pieces_sent(const Plan& p) {
  std::vector<double> out(p.senders.size(), 0);
  for (const Gather& g : p.gathers) {
    int64_t others = 0;
    for (const auto& pc : g.pieces) others += pc.rank != g.root ? pc.box.numel() : 0;
    for (const auto& pc : g.pieces)
      if (pc.rank != g.root)
        out[pc.rank] += static_cast<double>(g.bytes) * static_cast<double>(pc.box.numel()) /
                        static_cast<double>(others);
  }
  return out;
}

TEST(Links, GathersLoadTheSendersNicsAndTheRootsTakeThemInAtNicRate) {
  const spec::Inputs in = demo();
  Options o;
  o.gather_cost_us = 0;  // gathers everywhere
  auto p = make_plan(in, o);
  ASSERT_TRUE(p) << p.status().message();
  ASSERT_GT(p->gathers.size(), 0u);
  const std::vector<double> sent = pieces_sent(*p);
  double net = 0, gat = 0;
  for (size_t i = 0; i < p->senders.size(); ++i) {
    const Sender& s = p->senders[i];
    const double nics = static_cast<double>(s.nic_bytes.size());
    for (uint64_t n : s.nic_bytes)
      net = std::max(net, (static_cast<double>(n) + sent[i] / nics) * 8 / (s.nic_gbps * 1e9));
    gat = std::max(gat, static_cast<double>(s.gather_bytes_in) * 8 / (s.nic_gbps * 1e9 * nics));
  }
  for (const Receiver& r : p->receivers)
    for (uint64_t n : r.nic_bytes)
      net = std::max(net, static_cast<double>(n) * 8 / (r.nic_gbps * 1e9));
  const Summary sum = summarize(*p);
  EXPECT_DOUBLE_EQ(sum.network_s, net);
  EXPECT_DOUBLE_EQ(sum.gather_s, gat);
  EXPECT_GT(sum.gather_out_bytes, 0u);
  const std::string r = report(*p, "demo");
  EXPECT_NE(r.find("gathers (host collective: one-sided writes into the root's registered buffer, "
                   "over the trainers' NICs; JobConfig.gathers \"nccl\" runs them on NCCL)"),
            std::string::npos)
      << r;
  EXPECT_EQ(r.find("NVLink root"), std::string::npos) << r;
}

// Gathers on NCCL (JobConfig.gathers "nccl") ride NVLink: the NICs carry only the writes, and
// the gathers take each rank's pieces in and out at nvlink_gbps; the report says NCCL. The
// packing trade then prices gathers at NVLink too, so at least as many units pack.
TEST(Links, NcclGathersAreCostedOnNvlinkApartFromTheNics) {
  const spec::Inputs in = demo();
  Options o;
  o.gather_cost_us = 0;
  o.nccl_gathers = true;
  o.intra_domain_gathers_only = true;
  auto p = make_plan(in, o);
  ASSERT_TRUE(p) << p.status().message();
  ASSERT_TRUE(verify_plan(in, *p));
  ASSERT_GT(p->gathers.size(), 0u);
  const std::vector<double> sent = pieces_sent(*p);
  double net = 0, gat = 0;
  for (size_t i = 0; i < p->senders.size(); ++i) {
    const Sender& s = p->senders[i];
    for (uint64_t n : s.nic_bytes)
      net = std::max(net, static_cast<double>(n) * 8 / (s.nic_gbps * 1e9));
    gat = std::max({gat, sent[i] * 8 / (s.nvlink_gbps * 1e9),
                    static_cast<double>(s.gather_bytes_in) * 8 / (s.nvlink_gbps * 1e9)});
  }
  for (const Receiver& r : p->receivers)
    for (uint64_t n : r.nic_bytes)
      net = std::max(net, static_cast<double>(n) * 8 / (r.nic_gbps * 1e9));
  const Summary sum = summarize(*p);
  EXPECT_DOUBLE_EQ(sum.network_s, net);
  EXPECT_DOUBLE_EQ(sum.gather_s, gat);
  EXPECT_DOUBLE_EQ(sum.predicted_s, std::max(net, gat));
  EXPECT_GT(sum.gather_out_bytes, 0u);
  const std::string r = report(*p, "demo");
  EXPECT_NE(r.find("gathers (NCCL inside each NVLink domain"), std::string::npos) << r;
  // The option travels with a saved plan.
  auto back = from_json(to_json(*p));
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_TRUE(back->options.nccl_gathers);
}

TEST(Links, IpcPlansCostSameHostLinksAtNvlinkRate) {
  const spec::Inputs in = demo();
  Options o;
  o.ipc_links = true;
  o.gather_cost_us = 0;
  auto p = make_plan(in, o);
  ASSERT_TRUE(p) << p.status().message();
  ASSERT_TRUE(verify_plan(in, *p));
  const double rate = in.topology.hosts[0].nvlink_gbps * 1e9;
  const std::vector<double> sent = pieces_sent(*p);
  double net = 0, floor = 0;
  for (size_t i = 0; i < p->senders.size(); ++i)
    net = std::max(net, (static_cast<double>(p->senders[i].bytes_out) + sent[i]) * 8 / rate);
  for (const Receiver& r : p->receivers) {
    net = std::max(net, static_cast<double>(r.bytes_in) * 8 / rate);
    floor = std::max(floor, static_cast<double>(r.bytes_in) * 8 / rate);
  }
  const Summary sum = summarize(*p);
  EXPECT_DOUBLE_EQ(sum.network_s, net);
  EXPECT_DOUBLE_EQ(sum.ingress_floor_s, floor);
  EXPECT_NE(report(*p, "demo").find("time (links: same-host ipc, 3600 Gb/s per GPU"),
            std::string::npos);
  // The option travels with the plan; plans saved before it existed load as NIC plans.
  auto back = from_json(to_json(*p));
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_TRUE(back->options.ipc_links);
  std::string old = to_json(*p);
  const std::string key = ", \"ipc_links\": true";
  old.erase(old.find(key), key.size());
  auto older = from_json(old);
  ASSERT_TRUE(older) << older.status().message();
  EXPECT_FALSE(older->options.ipc_links);
}

TEST(Links, IpcPlansRefuseRanksOnOtherHosts) {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/llama-3.1-8b/";
  auto in = spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json");
  ASSERT_TRUE(in) << in.status().message();
  Options o;
  o.ipc_links = true;
  auto p = make_plan(*in, o);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.status().message(),
            "ipc links join ranks of one host: inference rank 0 is on 'inf0', trainer rank 0 on "
            "'trn0' (use the fabric or verbs backend across hosts)");
}

// demo-moe on two hosts of 6 GPU slots: trainers 0-1 on h0 and 2-3 on h1, its dense params
// sharded over fsdp only (EP2 x FSDP2: ranks 0 and 2 hold the same dense shards, 1 and 3 too),
// replica 0 on h1, replica 1 on h0 (so that a plan balancing bytes alone serves replica 0 from
// the first, least-loaded ranks: h0's).
spec::Inputs two_hosts() {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/demo-moe/";
  auto read = [&](const char* f) { return nlohmann::json::parse(std::ifstream(dir + f)); };
  nlohmann::json t = read("trainer.json"), i = read("inference.json"), c = read("topology.json");
  for (auto& p : t["params"])
    if (p["name"].get<std::string>().find("experts") == std::string::npos)
      p["placement"].erase("ep");
  t["mesh"]["devices"] = nlohmann::json::array({{{"host", "h0"}, {"gpu", 0}},
                                                {{"host", "h0"}, {"gpu", 1}},
                                                {{"host", "h1"}, {"gpu", 2}},
                                                {{"host", "h1"}, {"gpu", 3}}});
  const nlohmann::json axes = i["replicas"]["mesh"]["axes"];
  auto on = [&](const char* host) {
    return nlohmann::json{{"axes", axes},
                          {"devices", nlohmann::json::array({{{"host", host}, {"gpu", 4}},
                                                             {{"host", host}, {"gpu", 5}}})}};
  };
  i["replicas"] = nlohmann::json::array({on("h1"), on("h0")});
  nlohmann::json h = c["hosts"][0];
  h["gpus"] = 6;
  c["hosts"] = nlohmann::json::array();
  for (const char* name : {"h0", "h1"}) {
    h["name"] = name;
    c["hosts"].push_back(h);
  }
  auto in = spec::make_inputs(t, i, c, {}, {"t", "i", "c"});
  EXPECT_TRUE(in) << in.status().message();
  return std::move(in).value();
}

// The hybrid backend's costing: a pair on one host rides its ipc link at nvlink_gbps, other
// pairs their NICs, each rank's links at once. Computed here from the plan's writes.
TEST(Links, HybridPlansCostEachPairOnItsOwnLink) {
  const spec::Inputs in = two_hosts();
  Options o;
  o.hybrid_links = true;
  auto p = make_plan(in, o);
  ASSERT_TRUE(p) << p.status().message();
  ASSERT_TRUE(verify_plan(in, *p));
  ASSERT_EQ(p->receivers.size(), 4u);
  std::vector<double> s_ipc(p->senders.size()), r_ipc(4), r_nic(4);
  std::vector<std::vector<double>> s_nic(p->senders.size());
  for (size_t k = 0; k < p->senders.size(); ++k) s_nic[k].assign(p->senders[k].nic_bytes.size(), 0);
  uint64_t ipc = 0, total = 0;
  for (const Write& w : p->writes) {
    const uint32_t r = p->dests[w.dest].receiver;
    total += w.len;
    if (p->receivers[r].host == p->senders[w.sender].host) {
      ipc += w.len;
      s_ipc[w.sender] += static_cast<double>(w.len);
      r_ipc[r] += static_cast<double>(w.len);
    } else {
      s_nic[w.sender][w.nic] += static_cast<double>(w.len);
      r_nic[r] += static_cast<double>(w.len);  // one NIC a receiver here
    }
  }
  ASSERT_GT(ipc, 0u);
  ASSERT_LT(ipc, total);
  const double link = in.topology.hosts[0].nvlink_gbps * 1e9,
               nic = in.topology.hosts[0].nic_gbps * 1e9;
  const std::vector<double> sent = pieces_sent(*p);
  double net = 0, floor = 0;
  for (size_t k = 0; k < p->senders.size(); ++k) {
    net = std::max(net, (s_ipc[k] + sent[k]) * 8 / link);
    for (double n : s_nic[k]) net = std::max(net, n * 8 / nic);
  }
  for (size_t r = 0; r < 4; ++r) {
    const double t = std::max(r_ipc[r] * 8 / link, r_nic[r] * 8 / nic);
    net = std::max(net, t);
    floor = std::max(floor, t);
  }
  const Summary sum = summarize(*p);
  EXPECT_EQ(sum.ipc_bytes, ipc);
  EXPECT_DOUBLE_EQ(sum.network_s, net);
  EXPECT_DOUBLE_EQ(sum.ingress_floor_s, floor);
  // Planned for NICs alone, the same job sends fewer bytes within a host: the hybrid plan gives a
  // receiver's dense shards to the holder on its own host. And it predicts no slower.
  auto nics = make_plan(in, {});
  ASSERT_TRUE(nics);
  uint64_t nic_plan_local = 0;
  for (const Write& w : nics->writes)
    nic_plan_local +=
        nics->receivers[nics->dests[w.dest].receiver].host == nics->senders[w.sender].host ? w.len
                                                                                           : 0;
  EXPECT_GT(ipc, nic_plan_local);
  Plan nic_costed = *nics;
  nic_costed.options.hybrid_links = true;  // that plan, costed on the hybrid links
  EXPECT_LT(sum.predicted_s, summarize(nic_costed).predicted_s);
  EXPECT_NE(report(*p, "two hosts").find("time (links: same-host pairs over ipc"),
            std::string::npos);
  auto back = from_json(to_json(*p));
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_TRUE(back->options.hybrid_links);
  o.ipc_links = true;
  auto both = make_plan(in, o);
  ASSERT_FALSE(both);
  EXPECT_NE(both.status().message().find("pick one"), std::string::npos);
}

}  // namespace
}  // namespace weightcast::plan
