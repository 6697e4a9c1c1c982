// Transport logic that needs no fabric: the imm codec, the credit barrier, striping, descriptor
// and address serialisation (the rendezvous: rendezvous_test.cpp).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "weightcast/transport/domain.h"
#include "weightcast/transport/imm_counters.h"
#include "weightcast/transport/nic_group.h"

namespace weightcast::transport {
namespace {

using Clock = std::chrono::steady_clock;
auto in_ms(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

TEST(Imm, RoundTrips) {
  for (uint32_t g : {0u, 1u, 127u, 255u})
    for (uint32_t ph : {0u, 3u, 255u})
      for (uint32_t s : {0u, 1u, 4095u, 65535u}) {
        const Imm i{static_cast<uint8_t>(g), static_cast<uint8_t>(ph), static_cast<uint16_t>(s)};
        EXPECT_EQ(Imm::decode(i.encode()), i);
      }
  EXPECT_EQ((Imm{1, 2, 3}.encode()), 0x01020003u);
  EXPECT_LT(generation_diff(4, 5), 0);
  EXPECT_LT(generation_diff(255, 0), 0);  // wraps: 255 is older than 0
  EXPECT_GT(generation_diff(0, 255), 0);
  EXPECT_EQ(imms_per_write(3), 3u);
}

TEST(ImmCounters, CreditsCountBeforeTheWaitAndAreSubtracted) {
  ImmCounters c;
  c.begin_generation(7);
  for (int i = 0; i < 5; ++i) c.arrive(Imm{7, 1, 2}.encode());
  EXPECT_TRUE(c.wait(7, {{1, 2, 3}}, in_ms(10)));
  EXPECT_EQ(c.count(7, 1, 2), 2u);
  Status s = c.wait(7, {{1, 2, 3}}, in_ms(20));
  EXPECT_EQ(s.code(), Code::kTimeout);
  EXPECT_NE(s.message().find("sender 2 (phase 1: 2 of 3 imms)"), std::string::npos) << s.message();
  EXPECT_EQ(c.count(7, 1, 2), 2u);  // a failed wait subtracts nothing
}

// Per-sender groups (how a staging receiver copies each sender's bytes as soon as they are in):
// the group that completes first is returned first, each once; a timeout names only the groups
// still short.
TEST(ImmCounters, WaitAnyReturnsEachGroupAsItCompletes) {
  ImmCounters c;
  c.begin_generation(3);
  const std::vector<std::vector<Expect>> groups = {
      {{0, 0, 2}}, {{0, 1, 1}, {1, 1, 1}}, {{0, 2, 1}}};
  std::vector<bool> done;
  c.arrive(Imm{3, 0, 1}.encode());
  c.arrive(Imm{3, 1, 1}.encode());  // sender 1 complete, sender 0 half
  c.arrive(Imm{3, 0, 0}.encode());
  auto g = c.wait_any(3, groups, done, in_ms(1000));
  ASSERT_TRUE(g);
  EXPECT_EQ(*g, 1u);
  c.arrive(Imm{3, 0, 0}.encode());
  g = c.wait_any(3, groups, done, in_ms(1000));
  ASSERT_TRUE(g);
  EXPECT_EQ(*g, 0u);
  g = c.wait_any(3, groups, done, in_ms(20));
  ASSERT_FALSE(g);
  EXPECT_EQ(g.status().code(), Code::kTimeout);
  EXPECT_NE(g.status().message().find("sender 2 (phase 0: 0 of 1 imms)"), std::string::npos);
  EXPECT_EQ(g.status().message().find("sender 0"), std::string::npos) << g.status().message();
  c.arrive(Imm{3, 0, 2}.encode());
  g = c.wait_any(3, groups, done, in_ms(1000));
  ASSERT_TRUE(g);
  EXPECT_EQ(*g, 2u);
  EXPECT_EQ(done, (std::vector<bool>{true, true, true}));
}

TEST(ImmCounters, ReleasesExactlyOnTheLastArrival) {
  ImmCounters c;
  c.begin_generation(1);
  std::atomic<bool> released{false};
  std::thread waiter([&] {
    EXPECT_TRUE(c.wait(1, {{0, 0, 3}, {0, 1, 2}}, in_ms(5000)));
    released = true;
  });
  c.arrive(Imm{1, 0, 0}.encode());
  c.arrive(Imm{1, 0, 0}.encode());
  c.arrive(Imm{1, 0, 1}.encode());
  c.arrive(Imm{1, 0, 0}.encode());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(released);  // sender 1 is one short
  c.arrive(Imm{1, 0, 1}.encode());
  waiter.join();
  EXPECT_TRUE(released);
}

TEST(ImmCounters, OlderGenerationsNeverCount) {
  ImmCounters c;
  c.begin_generation(10);
  c.arrive(Imm{9, 0, 0}.encode());
  c.arrive(Imm{10, 0, 0}.encode());
  EXPECT_EQ(c.stale(), 1u);
  EXPECT_EQ(c.count(9, 0, 0), 0u);
  // Credits of the old generation are dropped when a new one begins.
  c.begin_generation(11);
  EXPECT_EQ(c.count(10, 0, 0), 0u);
  c.arrive(Imm{10, 0, 0}.encode());
  EXPECT_EQ(c.stale(), 2u);
  EXPECT_EQ(c.wait(11, {{0, 0, 1}}, in_ms(10)).code(), Code::kTimeout);
  // An early arrival of the next generation is kept.
  c.arrive(Imm{12, 0, 0}.encode());
  c.begin_generation(12);
  EXPECT_TRUE(c.wait(12, {{0, 0, 1}}, in_ms(10)));
}

TEST(NicGroup, StripeCoversEveryByteOnceWithOneShardPerNic) {
  for (uint64_t len : {0ull, 1ull, 2ull, 7ull, 1000003ull})
    for (uint32_t k = 1; k <= 4; ++k) {
      auto s = stripe(len, k);
      ASSERT_EQ(s.size(), k);  // zero-length shards included: counts stay exact
      uint64_t next = 0;
      for (const Shard& x : s) {
        EXPECT_EQ(x.off, next);
        next += x.len;
      }
      EXPECT_EQ(next, len);
    }
}

TEST(NicGroup, DescriptorsAndAddressesRoundTrip) {
  RemoteRegion r{4096, {{0x1000, 7, 4096}, {0, 9, 4096}}};
  auto back = RemoteRegion::parse(r.serialize());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->per_nic[1].key, 9u);
  auto bytes = r.serialize();
  bytes.pop_back();
  EXPECT_FALSE(RemoteRegion::parse(bytes));
  EXPECT_FALSE(RemoteRegion::parse(std::vector<uint8_t>{'W', 'C', 'R', '1'}));
  auto packed = pack_addresses({{1, 2, 3}, {4}});
  auto un = unpack_addresses(packed);
  ASSERT_TRUE(un);
  EXPECT_EQ((*un)[0], (std::vector<uint8_t>{1, 2, 3}));
  packed[12] = 0xff;  // corrupt a length
  EXPECT_FALSE(unpack_addresses(packed));
}

}  // namespace
}  // namespace weightcast::transport

namespace weightcast::transport {
namespace {

// Asking libfabric for FI_HMEM (as a GPU job does) never breaks a provider without it, and a claim
// is believed only once a GPU buffer registered: without a GPU (this machine, CI) the domain
// opens, writes host memory, and says that GPU tensors must be staged.
TEST(FabricHmem, AskedForItAProviderWithoutAGpuStillOpensAndSaysStage) {
  ::setenv("WEIGHTCAST_FI_HMEM", "1", 1);
  DomainConfig cfg;
  cfg.provider = "tcp";
  cfg.address = "127.0.0.1";
  auto d = open_domain(cfg);
  ::unsetenv("WEIGHTCAST_FI_HMEM");
  ASSERT_TRUE(d) << d.status().message();
  std::vector<char> host(4096);
  auto mr = (*d)->register_memory(host.data(), host.size(), MemKind::kHost);
  ASSERT_TRUE(mr) << mr.status().message();
  EXPECT_TRUE((*d)->deregister(*mr));
  if (::access("/dev/nvidiactl", F_OK) != 0) {  // no NVIDIA driver: no GPU to believe a claim on
    EXPECT_FALSE((*d)->caps().device_memory);
  }
  if (!(*d)->caps().device_memory) {
    auto gpu = (*d)->register_memory(host.data(), host.size(), MemKind::kCuda);
    ASSERT_FALSE(gpu);
    EXPECT_NE(gpu.status().message().find("has no FI_HMEM: stage GPU data through pinned host"),
              std::string::npos)
        << gpu.status().message();
  }
}

}  // namespace
}  // namespace weightcast::transport
