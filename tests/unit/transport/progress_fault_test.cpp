// The progress engine and the barrier under injected faults (transport/fault_domain.h), over a
// real tcp;ofi_rxm endpoint pair on loopback inside this process: a refused post, failed,
// dropped, delayed and reordered completions, an error nobody posted, a failing completion
// queue, and arrivals of an aborted attempt that land after the retry began.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <thread>

#include "weightcast/transport/imm_counters.h"
#include "weightcast/transport/progress.h"

namespace weightcast::transport {
namespace {

using Clock = std::chrono::steady_clock;
auto in_ms(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

constexpr uint64_t kWrite = 4096;
constexpr int kWrites = 8;

// A sender engine (with `send_faults`) writing into a receiver engine (with `recv_faults`).
struct Pair {
  ImmCounters sc, rc;
  std::unique_ptr<ProgressEngine> s, r;
  std::vector<uint8_t> src = std::vector<uint8_t>(kWrite * kWrites),
                       dst = std::vector<uint8_t>(kWrite * kWrites);
  Region sreg, rreg;
  RemoteRegion remote;
  uint32_t peer = 0;

  void open(const std::string& send_faults, const std::string& recv_faults = "") {
    DomainConfig a, b;
    a.address = b.address = "127.0.0.1";
    a.faults = send_faults;
    b.faults = recv_faults;
    auto se = ProgressEngine::start({a}, &sc);
    auto re = ProgressEngine::start({b}, &rc);
    ASSERT_TRUE(se) << se.status().message();
    ASSERT_TRUE(re) << re.status().message();
    s = std::move(se).value();
    r = std::move(re).value();
    auto x = s->register_memory(src.data(), src.size(), MemKind::kHost);
    auto y = r->register_memory(dst.data(), dst.size(), MemKind::kHost);
    ASSERT_TRUE(x && y);
    sreg = *x;
    rreg = *y;
    remote = NicGroup::remote(rreg);
    auto p = s->connect(r->address());
    ASSERT_TRUE(p) << p.status().message();
    peer = *p;
    // Connection set-up outside the faults' counts would shift them: none here, the first
    // real write is op 1.
  }
  // kWrites writes of one generation, each to its own range with its own bytes.
  uint64_t submit(uint8_t gen, uint8_t fill) {
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(fill + i / kWrite);
    std::vector<GroupWrite> w;
    for (int i = 0; i < kWrites; ++i)
      w.push_back(
          {&sreg, i * kWrite, peer, &remote, i * kWrite, kWrite, true, Imm{gen, 0, 7}.encode()});
    return s->submit(std::move(w));
  }
  bool landed(uint8_t fill) const {
    for (size_t i = 0; i < dst.size(); ++i)
      if (dst[i] != static_cast<uint8_t>(fill + i / kWrite)) return false;
    return true;
  }
  Status barrier(uint8_t gen, uint64_t count, int ms) {
    return rc.wait(gen, {{0, 7, count}}, in_ms(ms));
  }
};

TEST(ProgressFaults, ARefusedPostFailsItsBatchAndNothingIsPostedTwice) {
  Pair p;
  p.open("fail_post=3");
  p.rc.begin_generation(1);
  Status st = p.s->wait(p.submit(1, 10), in_ms(20000));
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("injected post failure"), std::string::npos) << st.message();
  {
    Status w_ = p.s->drain(in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  const ProgressStats ps = p.s->stats();
  EXPECT_EQ(ps.shards_posted, uint64_t{kWrites - 1});  // the refused op went nowhere
  EXPECT_EQ(ps.errors, 1u);
  // Exactly the 7 that went out arrive: none twice (a credit more would let a barrier of 8
  // pass).
  {
    Status w_ = p.barrier(1, kWrites - 1, 20000);
    ASSERT_TRUE(w_) << w_.message();
  }
  EXPECT_FALSE(p.barrier(1, 1, 300));
  EXPECT_EQ(p.s->outstanding(), 0u);
}

// A sender engine with `faults` and two receiver engines, each with a registered area; the
// sender connects to neither (the tests choose when).
struct OneToTwo {
  ImmCounters sc, rc1, rc2;
  std::unique_ptr<ProgressEngine> s, r1, r2;
  std::vector<uint8_t> src = std::vector<uint8_t>(kWrite * kWrites), d1 = src, d2 = src;
  Region sreg, g1, g2;
  RemoteRegion dst1, dst2;

  void open(const std::string& faults) {
    DomainConfig a, b;
    a.address = b.address = "127.0.0.1";
    a.faults = faults;
    auto se = ProgressEngine::start({a}, &sc);
    auto e1 = ProgressEngine::start({b}, &rc1);
    auto e2 = ProgressEngine::start({b}, &rc2);
    ASSERT_TRUE(se && e1 && e2);
    s = std::move(se).value();
    r1 = std::move(e1).value();
    r2 = std::move(e2).value();
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
    auto x = s->register_memory(src.data(), src.size(), MemKind::kHost);
    auto y1 = r1->register_memory(d1.data(), d1.size(), MemKind::kHost);
    auto y2 = r2->register_memory(d2.data(), d2.size(), MemKind::kHost);
    ASSERT_TRUE(x && y1 && y2);
    sreg = *x;
    g1 = *y1;
    g2 = *y2;
    dst1 = NicGroup::remote(g1);
    dst2 = NicGroup::remote(g2);
  }
  // kWrites writes of generation 1 from `src` to `dst` at `peer`.
  uint64_t submit(uint32_t peer, const RemoteRegion* dst) {
    std::vector<GroupWrite> w;
    for (int i = 0; i < kWrites; ++i)
      w.push_back({&sreg, i * kWrite, peer, dst, i * kWrite, kWrite, true, Imm{1, 0, 7}.encode()});
    return s->submit(std::move(w));
  }
};

// One peer refuses every post for now (EAGAIN: a dead process behind a lingering connection).
// Writes to another peer queued behind its ops still go out and land, its own batch times out,
// and the drain after that finishes at once: its ops never went out and are dropped.
TEST(ProgressFaults, APeerThatRefusesEveryPostHoldsBackOnlyItsOwnWrites) {
  OneToTwo t;
  t.open("stall_peer=1");
  auto stalled = t.s->connect(t.r1->address());  // the first peer connected: stalled
  auto alive = t.s->connect(t.r2->address());
  ASSERT_TRUE(stalled && alive);
  t.rc2.begin_generation(1);
  const uint64_t stuck = t.submit(*stalled, &t.dst1);  // queued first
  const uint64_t through = t.submit(*alive, &t.dst2);
  Status ok = t.s->wait(through, in_ms(20000));
  ASSERT_TRUE(ok) << ok.message();
  ASSERT_TRUE(t.rc2.wait(1, {{0, 7, kWrites}}, in_ms(20000)));
  EXPECT_EQ(t.d2, t.src);  // every byte at the living peer
  Status st = t.s->wait(stuck, in_ms(300));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.code(), Code::kTimeout);
  EXPECT_EQ(t.s->outstanding(), uint64_t{kWrites});
  Status dr = t.s->drain(in_ms(20000));  // (a fence that waited on them would never end)
  ASSERT_TRUE(dr) << dr.message();
  EXPECT_EQ(t.s->outstanding(), 0u);
  EXPECT_EQ(t.s->stats().shards_posted, uint64_t{kWrites});  // the stalled ones never went out
  EXPECT_EQ(t.d1, std::vector<uint8_t>(t.d1.size(), 0));
}

// A backend that gives a new process its predecessor's connection (verbs' QP slot, reset on
// the way) drops what was posted to the old one without completions: the engine fails those
// shards at the reconnect, drops the queued ones (they must not reach the new process), and the
// new process's writes go out and land.
TEST(ProgressFaults, WritesToAProcessWhoseConnectionWasReusedFailAtTheReconnect) {
  OneToTwo t;
  t.open("stall_peer=1,reuse_peer=2");
  auto old = t.s->connect(t.r1->address());
  ASSERT_TRUE(old);
  const uint64_t lost = t.submit(*old, &t.dst1);  // never goes out (stalled)
  // Queued and refused at least once before the new process connects.
  for (int i = 0; i < 20000 && t.s->stats().eagain == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_GT(t.s->stats().eagain, 0u);
  Status probe;
  EXPECT_FALSE(t.s->probe(lost, probe));  // still queued
  // A new process on the old one's NIC connection (the group gives it a peer id of its own).
  auto fresh = t.s->connect(t.r2->address());
  ASSERT_TRUE(fresh);
  EXPECT_NE(*fresh, *old);
  Status st = t.s->wait(lost, in_ms(20000));
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("set up again for a new process"), std::string::npos) << st.message();
  t.rc2.begin_generation(1);
  Status ok = t.s->wait(t.submit(*fresh, &t.dst2), in_ms(20000));
  ASSERT_TRUE(ok) << ok.message();
  ASSERT_TRUE(t.rc2.wait(1, {{0, 7, kWrites}}, in_ms(20000)));
  EXPECT_EQ(t.d2, t.src);
  EXPECT_EQ(t.d1, std::vector<uint8_t>(t.d1.size(), 0));  // nothing of the old batch landed
  Status dr = t.s->drain(in_ms(20000));
  ASSERT_TRUE(dr) << dr.message();
  EXPECT_EQ(t.s->stats().shards_posted, uint64_t{kWrites});
}

TEST(ProgressFaults, AnErrorCompletionFailsItsBatchAtOnce) {
  Pair p;
  p.open("fail_completion=2");
  const uint64_t b = p.submit(1, 20);
  Status st = p.s->wait(b, in_ms(60000));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.code(), Code::kRemote);
  EXPECT_NE(st.message().find("injected (fail_completion=2)"), std::string::npos) << st.message();
  {
    Status w_ = p.s->drain(in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  EXPECT_EQ(p.s->stats().errors, 1u);
  // The failed batch is forgotten after the drain: waiting for it again is an error, not a hang.
  EXPECT_FALSE(p.s->wait(b, in_ms(100)));
}

TEST(ProgressFaults, ADroppedCompletionTimesOutAndTheDrainSaysWhatIsStillOut) {
  Pair p;
  p.open("drop_completion=5");
  Status st = p.s->wait(p.submit(1, 30), in_ms(1500));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.code(), Code::kTimeout);
  EXPECT_NE(st.message().find("1 of its NIC shards still outstanding"), std::string::npos)
      << st.message();
  Status d = p.s->drain(in_ms(300));
  ASSERT_FALSE(d);
  EXPECT_NE(d.message().find("1 NIC shard(s) of earlier writes still in flight"), std::string::npos)
      << d.message();
  EXPECT_EQ(p.s->outstanding(), 1u);
}

TEST(ProgressFaults, ErrorsOfUnknownOpsAndQueueFailuresAreCountedNotLost) {
  Pair p;
  p.open("orphan_error=1,fail_poll=1");
  {
    Status w_ = p.s->wait(p.submit(1, 40), in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  const ProgressStats ps = p.s->stats();
  EXPECT_EQ(ps.orphan_errors, 1u);
  EXPECT_NE(ps.last_orphan_error.find("nobody posted"), std::string::npos);
  EXPECT_EQ(ps.poll_errors, 1u);
  EXPECT_NE(ps.last_poll_error.find("injected completion queue failure"), std::string::npos);
  {
    Status w_ = p.barrier(1, kWrites, 20000);
    ASSERT_TRUE(w_) << w_.message();
  }
  EXPECT_TRUE(p.landed(40));
}

TEST(ProgressFaults, DelayedAndReorderedCompletionsStillCompleteExactly) {
  Pair p;
  p.open("delay=40,reorder", "reorder");
  {
    Status w_ = p.s->wait(p.submit(1, 50), in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  {
    Status w_ = p.barrier(1, kWrites, 20000);
    ASSERT_TRUE(w_) << w_.message();
  }
  EXPECT_TRUE(p.landed(50));
  EXPECT_EQ(p.s->stats().shards_done, uint64_t{kWrites});
}

TEST(ProgressFaults, AnAbortedAttemptsLateArrivalsNeverCountTowardTheRetry) {
  Pair p;
  p.open("", "hold_arrivals=2:3");  // attempt 1's arrivals 2..4 land after attempt 2 began
  p.rc.begin_generation(1);
  {
    Status w_ = p.s->wait(p.submit(1, 60), in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  Status first = p.barrier(1, kWrites, 500);  // 5 of 8 arrived: the attempt fails
  ASSERT_FALSE(first);
  EXPECT_NE(first.message().find("5 of 8"), std::string::npos) << first.message();
  p.rc.begin_generation(2);  // the retry
  {
    Status w_ = p.s->wait(p.submit(2, 70), in_ms(20000));
    ASSERT_TRUE(w_) << w_.message();
  }
  {
    Status w_ = p.barrier(2, kWrites, 20000);
    ASSERT_TRUE(w_) << w_.message();
  }
  EXPECT_TRUE(p.landed(70));
  // The three held arrivals of generation 1 did land, after the retry's first: dropped as stale.
  EXPECT_EQ(p.rc.stale(), 3u);
  EXPECT_EQ(p.rc.count(2, 0, 7), 0u);  // nothing extra credited to the retry
}

TEST(ProgressFaults, ABadFaultSpecNamesTheFault) {
  ImmCounters c;
  DomainConfig a;
  a.address = "127.0.0.1";
  a.faults = "fail_post=0";
  auto e = ProgressEngine::start({a}, &c);
  ASSERT_FALSE(e);
  EXPECT_NE(e.status().message().find("fail_post needs a count >= 1"), std::string::npos);
  a.faults = "explode";
  e = ProgressEngine::start({a}, &c);
  ASSERT_FALSE(e);
  EXPECT_NE(e.status().message().find("unknown fault 'explode'"), std::string::npos);
}

// probe() asks without giving up: a batch still in flight stays known (a later wait or probe
// finds it), and a settled one answers what wait() would.
TEST(ProgressFaults, AProbedBatchInFlightIsStillWaitedFor) {
  Pair p;
  p.open("delay=50");
  p.rc.begin_generation(1);
  const uint64_t b = p.submit(1, 10);
  Status st;
  EXPECT_FALSE(p.s->probe(b, st));  // just queued, completions late: in flight
  EXPECT_FALSE(p.s->probe(b, st));
  ASSERT_TRUE(p.s->wait(b, in_ms(20000)));
  ASSERT_TRUE(p.barrier(1, kWrites, 20000));
  EXPECT_TRUE(p.landed(10));
  p.rc.begin_generation(2);
  const uint64_t b2 = p.submit(2, 20);
  while (!p.s->probe(b2, st)) std::this_thread::yield();
  EXPECT_TRUE(st) << st.message();
  ASSERT_TRUE(p.barrier(2, kWrites, 20000));
  EXPECT_TRUE(p.landed(20));
}

}  // namespace
}  // namespace weightcast::transport
