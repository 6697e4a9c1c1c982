// The C++ API as a job uses it, with peers that restart between steps: a controller, every
// receiver and sender of the demo-moe job in this process (each peer's step on a thread of its
// own), real tcp;ofi_rxm endpoints on loopback. A restarted peer is a new Receiver / Sender
// object (new incarnation, new endpoints, fresh buffers), as a restarted process would be; the
// others link to it through the library alone. Every byte is checked against the reference.
#include <dirent.h>
#include <gtest/gtest.h>

#include "api_job.h"
#include "weightcast/session/keys.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::api {
namespace {

using apitest::Job;
using apitest::Recv;
using apitest::Send;
using apitest::step_all;

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
TEST(ApiConfig, AnUnknownBackendIsNamedWithTheChoices) {
  Job j;
  ASSERT_TRUE(j.ctl);
  JobConfig c = j.cfg;
  c.backend = "rdma";
  auto r = Receiver::create(c, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().message(),
            "JobConfig.backend is 'rdma'; expected fabric, verbs, ipc, hybrid or hybrid:verbs");
  c.token.clear();
  auto ctl = Controller::start(c);
  ASSERT_FALSE(ctl);
  EXPECT_NE(ctl.status().message().find("JobConfig.backend is 'rdma'"), std::string::npos);
}

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
  auto inc = (*rdv)->get(session::keys::incarnation("inference", 0), soon);
  ASSERT_TRUE(inc);
  const auto k = static_cast<uint32_t>(std::stoul(std::string(inc->begin(), inc->end())));
  auto blob = (*rdv)->get(session::keys::receiver_tensors(0, k), soon);
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
        (*peer)->put(session::keys::receiver_tensors(0, k), exec::serialize_descriptors(swapped));
    ASSERT_FALSE(st) << role << " " << rank << " overwrote receiver 0's descriptors";
    EXPECT_NE(st.message().find("may write only keys under"), std::string::npos) << st.message();
  }
  EXPECT_EQ((*rdv)->get(session::keys::receiver_tensors(0, k), soon).value(), *blob);
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
    ASSERT_TRUE(
        (*rdv)->put(session::keys::receiver_tensors(0, k), exec::serialize_descriptors(bad)));
    Send s;
    Status st = s.open(j.cfg, writer);
    ASSERT_FALSE(st) << c.what;
    EXPECT_NE(st.message().find(c.what), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("receiver 0"), std::string::npos) << st.message();
  }
  // A malformed arm (a buggy receiver, a corrupted store) fails the push naming the receiver
  // and the text; the sender's process goes on.
  ASSERT_TRUE((*rdv)->put(session::keys::receiver_tensors(0, k), *blob));
  Send s;
  Status st = s.open(j.cfg, writer);
  ASSERT_TRUE(st) << st.message();
  ASSERT_TRUE((*rdv)->put(session::keys::armed(0), "7 300 1"));
  s.train(j, writer, 7);
  auto p = s.s->push(7);
  ASSERT_FALSE(p);
  EXPECT_NE(p.status().message().find("step 7: receiver 0: malformed arm record '7 300 1': bad "
                                      "generation (0..255)"),
            std::string::npos)
      << p.status().message();
  // A malformed incarnation is named too, when a sender links to that receiver.
  ASSERT_TRUE((*rdv)->put(session::keys::incarnation("inference", 0), "12abc"));
  Send s2;
  st = s2.open(j.cfg, writer);
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("malformed incarnation record '12abc'"), std::string::npos)
      << st.message();
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
    std::vector<std::string> errors(ss.size());
    for (uint32_t s = 0; s < ss.size(); ++s)
      g.push_back(std::async(std::launch::async, [&, s] {
        ss[s].train(j, s, 2);
        auto p = ss[s].s->push(2);
        if (!p) errors[s] = p.status().message();
        return bool(p);
      }));
    size_t failed = 0;
    for (auto& x : g) failed += !x.get();
    EXPECT_GT(failed, 0u);
    // The senders waiting for receiver 0's arm say that its process went away, not only that
    // the deadline passed.
    size_t named = 0;
    for (const std::string& e : errors)
      named += e.find("receiver 0 did not arm an attempt within 3 s (its process went away") !=
               std::string::npos;
    EXPECT_GT(named, 0u) << errors[0];
  }
  // Every progress thread, readiness thread and rendezvous server thread is gone.
  EXPECT_EQ(threads_of_this_process(), before);
}

}  // namespace
}  // namespace weightcast::api
