// The C++ API as a job uses it, with peers that restart between steps: a controller, every
// receiver and sender of the demo-moe job in this process (each peer's step on a thread of its
// own), real tcp;ofi_rxm endpoints on loopback. A restarted peer is a new Receiver / Sender
// object (new incarnation, new endpoints, fresh buffers), as a restarted process would be; the
// others link to it through the library alone. Every byte is checked against the reference.
#include <dirent.h>
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "weightcast/api/weightcast.h"
#include "weightcast/exec/binding.h"
#include "weightcast/exec/keys.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::api {
namespace {

struct Job {
  JobConfig cfg;
  std::unique_ptr<Controller> ctl;
  spec::Inputs in;
  plan::Plan plan;

  Job() {
    const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/demo-moe/";
    cfg.trainer_spec = dir + "trainer.json";
    cfg.inference_spec = dir + "inference.json";
    cfg.topology = dir + "topology.json";
    cfg.deadline_s = 30;
    auto c = Controller::start(cfg);
    EXPECT_TRUE(c) << c.status().message();
    ctl = std::make_unique<Controller>(std::move(c).value());
    in = *spec::load_inputs(cfg.trainer_spec, cfg.inference_spec, cfg.topology);
    plan = *plan::make_plan(in, plan::Options{});  // what the controller planned
  }
};

struct Recv {
  std::unique_ptr<Receiver> r;
  std::vector<std::vector<std::byte>> bufs;
  WaitStats last;  // of the last successful wait
  Status open(const JobConfig& cfg, uint32_t index) {
    auto x = Receiver::create(cfg, index);
    if (!x) return x.status();
    r = std::make_unique<Receiver>(std::move(x).value());
    bufs.clear();
    for (const TensorInfo& t : r->tensors()) {
      bufs.emplace_back(t.bytes, std::byte{0xee});  // fresh buffers: nothing of the old ones
      if (Status s = r->register_tensor(t.name, bufs.back().data(), t.bytes, t.scales); !s)
        return s;
    }
    return r->publish();
  }
  // Every byte of every tensor of receiver `index` against the reference of `step`.
  std::string check(const Job& j, uint32_t index, uint64_t step) const {
    size_t k = 0;
    for (uint32_t d = 0; d < j.plan.dests.size(); ++d) {
      if (j.plan.dests[d].receiver != index) continue;
      const auto ref = plan::reference_tensor(j.in, j.plan.dests[d], j.plan.receivers[index], step);
      if (ref.size() != bufs[k].size() || std::memcmp(ref.data(), bufs[k].data(), ref.size()))
        return fmt::format("receiver {} step {}: '{}' differs from the reference", index, step,
                           j.plan.dest_names[j.plan.dests[d].param]);
      ++k;
    }
    return "";
  }
};

struct Send {
  std::unique_ptr<Sender> s;
  std::vector<std::pair<TensorInfo, std::vector<std::byte>>> shards;
  Status open(const JobConfig& cfg, uint32_t rank) {
    auto x = Sender::create(cfg, rank);
    if (!x) return x.status();
    s = std::make_unique<Sender>(std::move(x).value());
    shards.clear();
    for (const TensorInfo& t : s->tensors()) shards.push_back({t, std::vector<std::byte>(t.bytes)});
    for (auto& [t, buf] : shards)
      if (Status st = s->register_tensor(t.name, buf.data(), t.bytes); !st) return st;
    return s->prepare();
  }
  void train(const Job& j, uint32_t rank, uint64_t step) {  // new values in every element
    for (auto& shard : shards) {
      const auto& t = shard.first;
      auto& buf = shard.second;  // (not a structured binding: the lambda uses it)
      const spec::Param& p = j.in.trainer.params[j.in.trainer.index.at(t.name)];
      const auto box = *spec::local_box(p.shape, p.placement, j.in.trainer.mesh, rank);
      const uint64_t seed = plan::pattern_seed(t.name);
      size_t e = 0;
      core::for_each_run(p.shape, box, [&](int64_t off, int64_t len) {
        for (int64_t i = 0; i < len; ++i, ++e)
          core::store_from_float(p.dtype, plan::pattern_value(seed, off + i, step),
                                 buf.data() + e * core::dtype_size(p.dtype));
      });
    }
  }
};

// One step on every peer at once; the errors of those that failed.
std::vector<std::string> step_all(const Job& j, std::vector<Recv>& rs, std::vector<Send>& ss,
                                  uint64_t step) {
  std::vector<std::future<std::string>> f;
  for (uint32_t r = 0; r < rs.size(); ++r)
    f.push_back(std::async(std::launch::async, [&, r] {
      auto w = rs[r].r->wait(step);
      if (w) rs[r].last = *w;
      return w ? rs[r].check(j, r, step) : fmt::format("receiver {}: {}", r, w.status().message());
    }));
  for (uint32_t s = 0; s < ss.size(); ++s)
    f.push_back(std::async(std::launch::async, [&, s] {
      ss[s].train(j, s, step);
      auto p = ss[s].s->push(step);
      return p ? std::string() : fmt::format("sender {}: {}", s, p.status().message());
    }));
  std::vector<std::string> bad;
  for (auto& x : f)
    if (std::string e = x.get(); !e.empty()) bad.push_back(e);
  return bad;
}

TEST(ApiRestart, ATrainerAndAReceiverRestartedBetweenStepsAndTheJobGoesOn) {
  Job j;
  ASSERT_TRUE(j.ctl);
  std::vector<Recv> rs(j.ctl->receivers());
  std::vector<Send> ss(j.ctl->senders());
  ASSERT_GE(rs.size(), 2u);
  ASSERT_GE(ss.size(), 2u);
  {
    std::vector<std::future<Status>> f;
    for (uint32_t r = 0; r < rs.size(); ++r)
      f.push_back(std::async(std::launch::async, [&, r] { return rs[r].open(j.cfg, r); }));
    for (uint32_t s = 0; s < ss.size(); ++s)
      f.push_back(std::async(std::launch::async, [&, s] { return ss[s].open(j.cfg, s); }));
    for (auto& x : f) {
      Status st = x.get();
      ASSERT_TRUE(st) << st.message();
    }
  }
  auto bad = step_all(j, rs, ss, 1);
  ASSERT_TRUE(bad.empty()) << bad.front();
  // Receiver 0 goes away and comes back with fresh buffers.
  rs[0].r.reset();
  Status st = rs[0].open(j.cfg, 0);
  ASSERT_TRUE(st) << st.message();
  bad = step_all(j, rs, ss, 2);
  ASSERT_TRUE(bad.empty()) << bad.front();
  // Trainer 1 goes away and comes back (it links to receiver 0's new incarnation).
  ss[1].s.reset();
  st = ss[1].open(j.cfg, 1);
  ASSERT_TRUE(st) << st.message();
  bad = step_all(j, rs, ss, 3);
  ASSERT_TRUE(bad.empty()) << bad.front();
  // Both at once, then two more steps.
  rs[1].r.reset();
  ss[0].s.reset();
  st = rs[1].open(j.cfg, 1);
  ASSERT_TRUE(st) << st.message();
  st = ss[0].open(j.cfg, 0);
  ASSERT_TRUE(st) << st.message();
  for (uint64_t step = 4; step <= 5; ++step) {
    bad = step_all(j, rs, ss, step);
    ASSERT_TRUE(bad.empty()) << "step " << step << ": " << bad.front();
  }
}

// Receiver 0 stages every tensor through a host landing area (what GPU tensors get over a
// transport that cannot write GPU memory), receiver 1 takes the writes directly: both get every
// byte, say how, and a staged receiver restarted between steps goes on.
TEST(ApiStaging, StagedReceiversGetEveryByteAndSayHowTheyTookIt) {
  Job j;
  ASSERT_TRUE(j.ctl);
  JobConfig staged = j.cfg;
  staged.receiver_staging = "always";
  std::vector<Recv> rs(j.ctl->receivers());
  std::vector<Send> ss(j.ctl->senders());
  std::vector<std::future<Status>> f;
  for (uint32_t r = 0; r < rs.size(); ++r)
    f.push_back(
        std::async(std::launch::async, [&, r] { return rs[r].open(r == 0 ? staged : j.cfg, r); }));
  for (uint32_t s = 0; s < ss.size(); ++s)
    f.push_back(std::async(std::launch::async, [&, s] { return ss[s].open(j.cfg, s); }));
  for (auto& x : f) {
    Status st = x.get();
    ASSERT_TRUE(st) << st.message();
  }
  for (uint64_t step = 1; step <= 2; ++step) {
    auto bad = step_all(j, rs, ss, step);
    ASSERT_TRUE(bad.empty()) << bad.front();
    EXPECT_EQ(rs[0].last.mode, "staged");
    EXPECT_EQ(rs[0].last.staged_bytes, rs[0].last.bytes);  // every byte came through the landing
    EXPECT_EQ(rs[1].last.mode, "host");
    EXPECT_EQ(rs[1].last.staged_bytes, 0u);
  }
  rs[0].r.reset();
  Status st = rs[0].open(staged, 0);
  ASSERT_TRUE(st) << st.message();
  auto bad = step_all(j, rs, ss, 3);
  ASSERT_TRUE(bad.empty()) << bad.front();
  EXPECT_EQ(rs[0].last.staged_bytes, rs[0].last.bytes);
  JobConfig wrong = j.cfg;
  wrong.receiver_staging = "sometimes";
  auto w = Receiver::create(wrong, 1);
  ASSERT_FALSE(w);
  EXPECT_NE(w.status().message().find("receiver_staging is 'sometimes'"), std::string::npos);
}

// A token holder overwrites receiver 0's tensor descriptors: a sender refuses them by name when
// it prepares, before anything is written with them, and nothing crashes.
TEST(ApiTrust, TamperedDescriptorsAreRefusedNamingTheTensor) {
  Job j;
  ASSERT_TRUE(j.ctl);
  j.cfg.deadline_s = 10;
  std::vector<Recv> rs(j.ctl->receivers());
  for (uint32_t r = 0; r < rs.size(); ++r) ASSERT_TRUE(rs[r].open(j.cfg, r));
  const std::string host = j.cfg.rendezvous.substr(0, j.cfg.rendezvous.rfind(':'));
  const auto port = static_cast<uint16_t>(std::stoi(j.cfg.rendezvous.substr(host.size() + 1)));
  auto rdv = transport::RendezvousClient::connect(
      host, port, j.cfg.token, std::chrono::steady_clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(rdv);
  const auto soon = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto inc = (*rdv)->get(exec::keys::incarnation("inference", 0), soon);
  ASSERT_TRUE(inc);
  const auto k = static_cast<uint32_t>(std::stoul(std::string(inc->begin(), inc->end())));
  auto blob = (*rdv)->get(exec::keys::receiver_tensors(0, k), soon);
  ASSERT_TRUE(blob);
  auto good = exec::parse_descriptors(*blob);
  ASSERT_TRUE(good);
  // Which trainer writes to receiver 0.
  uint32_t writer = 0;
  for (const plan::Write& w : j.plan.writes)
    if (j.plan.dests[w.dest].receiver == 0) writer = w.sender;
  // With its own credential no peer can touch receiver 0's descriptors (swapping two would send
  // two tensors each other's bytes): only the controller's job token could.
  for (const auto& [role, rank] : {std::pair{"inference", 1u}, std::pair{"trainer", writer}}) {
    auto peer =
        transport::RendezvousClient::connect(host, port, j.ctl->peer_token(role, rank), soon);
    ASSERT_TRUE(peer) << peer.status().message();
    std::vector<std::pair<uint32_t, transport::RemoteRegion>> swapped(good->begin(), good->end());
    ASSERT_GE(swapped.size(), 2u);
    std::swap(swapped[0].second, swapped[1].second);
    Status st =
        (*peer)->put(exec::keys::receiver_tensors(0, k), exec::serialize_descriptors(swapped));
    ASSERT_FALSE(st) << role << " " << rank << " overwrote receiver 0's descriptors";
    EXPECT_NE(st.message().find("may write only keys under"), std::string::npos) << st.message();
  }
  EXPECT_EQ((*rdv)->get(exec::keys::receiver_tensors(0, k), soon).value(), *blob);
  struct Case {
    const char* what;
    std::function<void(transport::RemoteRegion&)> tamper;
  };
  for (const Case& c :
       std::vector<Case>{{"NIC key(s)", [](transport::RemoteRegion& r) { r.per_nic.clear(); }},
                         {"bytes; the plan says", [](transport::RemoteRegion& r) {
                            r.len += 64;
                            for (auto& n : r.per_nic) n.len += 64;
                          }}}) {
    std::vector<std::pair<uint32_t, transport::RemoteRegion>> bad(good->begin(), good->end());
    for (auto& [id, region] : bad) c.tamper(region);
    ASSERT_TRUE((*rdv)->put(exec::keys::receiver_tensors(0, k), exec::serialize_descriptors(bad)));
    Send s;
    Status st = s.open(j.cfg, writer);
    ASSERT_FALSE(st) << c.what;
    EXPECT_NE(st.message().find(c.what), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("receiver 0"), std::string::npos) << st.message();
  }
}

size_t threads_of_this_process() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
  }
  return n;
}

TEST(ApiTeardown, AJobTornDownAfterAFailedStepLeavesNoThreadRunning) {
  const size_t before = threads_of_this_process();
  {
    Job j;
    ASSERT_TRUE(j.ctl);
    j.cfg.deadline_s = 3;
    std::vector<Recv> rs(j.ctl->receivers());
    std::vector<Send> ss(j.ctl->senders());
    std::vector<std::future<Status>> f;
    for (uint32_t r = 0; r < rs.size(); ++r)
      f.push_back(std::async(std::launch::async, [&, r] { return rs[r].open(j.cfg, r); }));
    for (uint32_t s = 0; s < ss.size(); ++s)
      f.push_back(std::async(std::launch::async, [&, s] { return ss[s].open(j.cfg, s); }));
    for (auto& x : f) ASSERT_TRUE(x.get());
    ASSERT_TRUE(step_all(j, rs, ss, 1).empty());
    // Step 2 fails mid-way: receiver 0 never arms, so every push waiting for it and every other
    // receiver's wait fail at the deadline; then the whole job is torn down, as an exception in
    // the trainer loop would.
    rs[0].r.reset();
    std::vector<std::future<bool>> g;
    for (uint32_t r = 1; r < rs.size(); ++r)
      g.push_back(std::async(std::launch::async, [&, r] { return bool(rs[r].r->wait(2)); }));
    for (uint32_t s = 0; s < ss.size(); ++s)
      g.push_back(std::async(std::launch::async, [&, s] {
        ss[s].train(j, s, 2);
        return bool(ss[s].s->push(2));
      }));
    size_t failed = 0;
    for (auto& x : g) failed += !x.get();
    EXPECT_GT(failed, 0u);
  }
  // Every progress thread, readiness thread and rendezvous server thread is gone.
  EXPECT_EQ(threads_of_this_process(), before);
}

}  // namespace
}  // namespace weightcast::api
