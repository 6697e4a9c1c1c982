// What the report costs, link by link: gathers run on the host collective (their pieces load the
// senders' links, roots take them in at their link rate), and plans for the ipc backend cost
// same-host links at the host's nvlink_gbps. Expected times are computed here from the plan.
#include <gtest/gtest.h>

#include <algorithm>

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
                   "over the trainers' NICs; NCCL gathers are not built)"),
            std::string::npos)
      << r;
  EXPECT_EQ(r.find("NVLink root"), std::string::npos) << r;
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

}  // namespace
}  // namespace weightcast::plan
