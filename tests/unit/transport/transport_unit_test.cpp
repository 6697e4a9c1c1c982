// Transport logic that needs no fabric: the imm codec, the credit barrier, striping, descriptor
// and address serialisation, and the rendezvous protocol (token, limits, malformed frames).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "weightcast/transport/imm_counters.h"
#include "weightcast/transport/nic_group.h"
#include "weightcast/transport/rendezvous.h"

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

// Sends raw bytes to the server and returns what comes back (up to 256 bytes).
std::string raw(uint16_t port, const std::vector<uint8_t>& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "connect failed";
  (void)!write(fd, bytes.data(), bytes.size());
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  // Everything until the server closes the connection (it does after rejecting a frame).
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(Rendezvous, PutGetAndWaitForKeys) {
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok");
  ASSERT_TRUE(s) << s.status().message();
  auto a = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  auto b = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  ASSERT_TRUE(a && b);
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE((*a)->put("k", "value"));
  });
  auto v = (*b)->get("k", in_ms(3000));  // waits for the put
  late.join();
  ASSERT_TRUE(v) << v.status().message();
  EXPECT_EQ(std::string(v->begin(), v->end()), "value");
  auto missing = (*b)->get("nope", in_ms(100));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.status().code(), Code::kTimeout);
  EXPECT_NE(missing.status().message().find("key 'nope'"), std::string::npos);
}

TEST(Rendezvous, TokenLimitsAndMalformedFramesAreRejected) {
  RendezvousLimits lim;
  lim.max_value = 1024;
  auto s = RendezvousServer::start("127.0.0.1", 0, "secret", lim);
  ASSERT_TRUE(s);
  const uint16_t port = (*s)->port();
  auto bad = RendezvousClient::connect("127.0.0.1", port, "wrong", in_ms(2000));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("job token missing or wrong"), std::string::npos)
      << bad.status().message();
  // A request before the token, an oversized frame, a frame whose fields lie about their length.
  EXPECT_NE(raw(port, {0, 0, 0, 5, 'P', 0, 0, 0, 0}).find("token"), std::string::npos);
  EXPECT_NE(raw(port, {0x7f, 0xff, 0xff, 0xff}).find("rejected"), std::string::npos);
  std::vector<uint8_t> hello{0, 0, 0, 11, 'H', 0, 0, 0, 6, 's', 'e', 'c', 'r', 'e', 't'};
  std::vector<uint8_t> lie = hello;
  const std::vector<uint8_t> liar{0,    0, 0,   9,   'P', 0,  0,
                                  0x10, 0, 'k', 'k', 'k', 'k'};  // field says 4096 bytes
  lie.insert(lie.end(), liar.begin(), liar.end());
  EXPECT_NE(raw(port, lie).find("malformed"), std::string::npos);
  auto ok = RendezvousClient::connect("127.0.0.1", port, "secret", in_ms(2000));
  ASSERT_TRUE(ok);
  std::vector<uint8_t> big(2048, 1);
  Status st = (*ok)->put("big", big);
  EXPECT_FALSE(st);
  // The server survived all of it.
  auto again = RendezvousClient::connect("127.0.0.1", port, "secret", in_ms(2000));
  ASSERT_TRUE(again);
  EXPECT_TRUE((*again)->put("small", "x"));
  EXPECT_GE((*s)->stats().rejected, 4u);
}

TEST(Rendezvous, VersionsOnlyGrowAndGetNewerWaitsForAFreshValue) {
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok");
  ASSERT_TRUE(s);
  auto a = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  auto b = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  ASSERT_TRUE(a && b);
  const std::string one = "1", two = "2";
  auto v1 = (*a)->put_versioned("ready", {reinterpret_cast<const uint8_t*>(one.data()), 1});
  ASSERT_TRUE(v1);
  auto got = (*b)->get_newer("ready", 0, in_ms(2000));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->version, *v1);
  EXPECT_EQ(std::string(got->value.begin(), got->value.end()), "1");
  // Nothing newer than what we saw: a timeout naming the key, not the old value again.
  auto stale = (*b)->get_newer("ready", got->version, in_ms(100));
  ASSERT_FALSE(stale);
  EXPECT_NE(stale.status().message().find("'ready'"), std::string::npos);
  // The waiter wakes on the overwrite (the put happens only once the waiter has asked).
  std::atomic<bool> asked{false};
  std::thread late([&] {
    while (!asked) std::this_thread::yield();
    EXPECT_TRUE((*a)->put("ready", "2"));
  });
  asked = true;
  auto fresh = (*b)->get_newer("ready", got->version, in_ms(20000));
  late.join();
  ASSERT_TRUE(fresh) << fresh.status().message();
  EXPECT_GT(fresh->version, got->version);
  EXPECT_EQ(std::string(fresh->value.begin(), fresh->value.end()), two);
}

TEST(Rendezvous, UnauthenticatedSocketsAreDroppedAfterTheHandshakeDeadline) {
  RendezvousLimits lim;
  lim.handshake_timeout = std::chrono::milliseconds(200);
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok", lim);
  ASSERT_TRUE(s);
  // A socket that never says anything is closed by the server (read() sees EOF).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons((*s)->port());
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  char c;
  EXPECT_EQ(read(fd, &c, 1), 0);
  close(fd);
  // An authenticated peer idle for longer than that is still served.
  auto ok = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  ASSERT_TRUE(ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_TRUE((*ok)->put("still", "here"));
}

}  // namespace
}  // namespace weightcast::transport
