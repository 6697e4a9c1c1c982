// The rendezvous server as a cluster meets it: the protocol (token, limits, malformed frames),
// thousands of peers held at once, connection storms and idle sockets from clients without a
// token, per-peer credentials and memory caps. All over real loopback sockets.
#include "weightcast/transport/rendezvous.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <thread>

namespace weightcast::transport {
namespace {

using Clock = std::chrono::steady_clock;
auto in_ms(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

// A connected socket, or -errno. `from` (1..254) picks the loopback source address 127.0.0.from,
// each with its own local ports.
int dial(uint16_t port, int from = 1) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -errno;
  if (from != 1) {
    const int one = 1;  // the port is picked at connect(2), unique per 4-tuple
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl((127u << 24) | static_cast<uint32_t>(from));
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      const int err = errno;
      close(fd);
      return -err;
    }
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int err = errno;
    close(fd);
    return -err;
  }
  return fd;
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

TEST(Rendezvous, ManyKeysInOneRoundTripAnswerOnlyWhatIsNewer) {
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok");
  ASSERT_TRUE(s);
  auto a = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  ASSERT_TRUE(a);
  const std::string v = "armed 7";
  auto x = (*a)->put_versioned("x", {reinterpret_cast<const uint8_t*>(v.data()), v.size()});
  auto y = (*a)->put_versioned("y", {reinterpret_cast<const uint8_t*>(v.data()), 1});
  ASSERT_TRUE(x && y);
  const uint64_t gets = (*s)->stats().gets;
  // x: newer than 0; y: not newer than its own version; z: absent.
  auto got = (*a)->newer_now({"x", "y", "z"}, {0, *y, 0}, in_ms(2000));
  ASSERT_TRUE(got) << got.status().message();
  ASSERT_EQ(got->size(), 3u);
  ASSERT_TRUE((*got)[0].has_value());
  EXPECT_EQ(std::string((*got)[0]->value.begin(), (*got)[0]->value.end()), "armed 7");
  EXPECT_EQ((*got)[0]->version, *x);
  EXPECT_FALSE((*got)[1].has_value());
  EXPECT_FALSE((*got)[2].has_value());
  EXPECT_EQ((*s)->stats().gets, gets + 3);
  // No keys: an empty answer; mismatched lists: refused before anything is sent.
  auto none = (*a)->newer_now({}, {}, in_ms(2000));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  EXPECT_FALSE((*a)->newer_now({"x"}, {}, in_ms(2000)));
  // A key list that lies about its lengths is malformed: one error, the connection closed.
  std::vector<uint8_t> bad{0, 0, 0, 5, 'H', 0, 0, 0, 3, 't', 'o', 'k'};
  bad[3] = 8;
  const std::vector<uint8_t> many{0,   0, 0, 23, 'M', 0, 0, 0, 6, 0, 0, 0, 9, 'x',
                                  'x', 0, 0, 0,  8,   0, 0, 0, 0, 0, 0, 0, 0};
  bad.insert(bad.end(), many.begin(), many.end());
  EXPECT_NE(raw((*s)->port(), bad).find("malformed many-key request"), std::string::npos);
  // The connection that asked well still works.
  EXPECT_TRUE((*a)->put("after", "1"));
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
  // It gets one error frame, then EOF.
  std::string got;
  char buf[256];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  close(fd);
  EXPECT_NE(got.find("no job token within the handshake deadline"), std::string::npos) << got;
  // An authenticated peer idle for longer than that is still served.
  auto ok = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(2000));
  ASSERT_TRUE(ok);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_TRUE((*ok)->put("still", "here"));
}

std::string text(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

TEST(Rendezvous, FourThousandPeersAreHeldAndServedAtOnce) {
  constexpr int kPeers = 4096, kWaiters = 16;  // 16 more sessions park waits meanwhile
  // Both ends live in this process: two descriptors per session (the server raises the soft
  // limit to what it needs; the hard limit must allow it).
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  if (nofile.rlim_max < 2 * (kPeers + kWaiters) + 256)
    GTEST_SKIP() << "needs " << 2 * (kPeers + kWaiters) + 256
                 << " file descriptors; this machine's hard limit is " << nofile.rlim_max;
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok");
  ASSERT_TRUE(s);
  std::vector<std::unique_ptr<RendezvousClient>> peers;
  for (int i = 0; i < kPeers + kWaiters; ++i) {
    auto c = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(20000));
    ASSERT_TRUE(c) << "peer " << i << ": " << c.status().message();
    peers.push_back(std::move(c).value());
  }
  EXPECT_EQ((*s)->stats().clients, static_cast<uint64_t>(kPeers + kWaiters));
  // The extra sessions wait at the same time for keys nobody has put yet.
  std::vector<std::thread> waiters;
  std::atomic<int> woken{0};
  for (int i = 0; i < kWaiters; ++i)
    waiters.emplace_back([&, i] {
      auto v =
          peers[static_cast<size_t>(kPeers + i)]->get("late/" + std::to_string(i), in_ms(30000));
      if (v && text(*v) == "v" + std::to_string(i)) ++woken;
    });
  for (int i = 0; i < kPeers; ++i)
    ASSERT_TRUE(peers[static_cast<size_t>(i)]->put("k/" + std::to_string(i), std::to_string(i)));
  for (int i = 0; i < kPeers; ++i) {  // each reads its neighbour's key
    auto v =
        peers[static_cast<size_t>(i)]->get("k/" + std::to_string((i + 1) % kPeers), in_ms(5000));
    ASSERT_TRUE(v) << "peer " << i << ": " << v.status().message();
    ASSERT_EQ(text(*v), std::to_string((i + 1) % kPeers));
  }
  for (int i = 0; i < kWaiters; ++i)
    EXPECT_TRUE(peers[100]->put("late/" + std::to_string(i), "v" + std::to_string(i)));
  for (auto& t : waiters) t.join();
  EXPECT_EQ(woken, kWaiters);
  EXPECT_EQ((*s)->stats().clients, static_cast<uint64_t>(kPeers + kWaiters));
}

TEST(Rendezvous, ConnectionStormsWithoutATokenLeaveTheServerServing) {
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok");
  ASSERT_TRUE(s);
  auto peer = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(5000));
  ASSERT_TRUE(peer);
  ASSERT_TRUE((*peer)->put("before", "1"));
  // 100k connect/close cycles from a client that never authenticates; most close with a reset
  // (no TIME_WAIT left on the ports), every 100th gracefully. The cycles come from 16 loopback
  // source addresses, so that the client's host does not run out of local ports. A dial can still
  // fail for reasons of the client's host, not the server's (a port colliding with a connection
  // in TIME_WAIT); such a cycle dials again, and counts as failed only when three dials fail.
  constexpr int kCycles = 100000;
  int failed = 0;
  std::map<int, int> errors;
  for (int i = 0; i < kCycles; ++i) {
    int fd = -1;
    for (int attempt = 0; attempt < 3; ++attempt) {
      fd = dial((*s)->port(), 2 + (i + attempt) % 16);
      if (fd >= 0) break;
      ++errors[-fd];
    }
    if (fd < 0) {
      ++failed;
      continue;
    }
    if (i % 100 != 0) {
      linger l{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(fd);
  }
  std::string seen;
  for (auto [err, n] : errors) seen += fmt::format(" {}: {};", std::strerror(err), n);
  if (!seen.empty()) fmt::print(stderr, "dial errors:{}\n", seen);
  EXPECT_LT(failed, kCycles / 1000) << "dial errors:" << seen;
  // Still alive and serving: the old session and new ones.
  auto v = (*peer)->get("before", in_ms(5000));
  ASSERT_TRUE(v) << v.status().message();
  auto fresh = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(5000));
  ASSERT_TRUE(fresh) << fresh.status().message();
  EXPECT_TRUE((*fresh)->put("after", "2"));
  EXPECT_GT((*s)->stats().connections, static_cast<uint64_t>(kCycles / 2));
  // Every storm socket is reaped: only the two real sessions stay.
  const auto until = in_ms(30000);
  while ((*s)->stats().clients > 2 && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ((*s)->stats().clients, 2u);
}

TEST(Rendezvous, IdleSocketsWithoutATokenNeverLockPeersOut) {
  RendezvousLimits lim;
  lim.max_unauthenticated = 64;
  lim.handshake_timeout = std::chrono::milliseconds(120000);  // eviction, not the deadline, works
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok", lim);
  ASSERT_TRUE(s);
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) idle.push_back(dial((*s)->port()));
  for (int i = 0; i < 12; ++i) {
    auto c = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(5000));
    ASSERT_TRUE(c) << "peer " << i << ": " << c.status().message();
    ASSERT_TRUE((*c)->put("p/" + std::to_string(i), "x"));
    auto v = (*c)->get("p/" + std::to_string(i), in_ms(5000));
    ASSERT_TRUE(v);
  }
  EXPECT_GE((*s)->stats().evicted, 300u - 64u);
  // The evicted ones were told why before their socket closed.
  std::string got;
  char buf[256];
  for (ssize_t n; (n = read(idle[0], buf, sizeof buf)) > 0;)
    got.append(buf, static_cast<size_t>(n));
  EXPECT_NE(got.find("evicted"), std::string::npos) << got;
  for (int fd : idle) close(fd);
}

TEST(Rendezvous, APeerTokenWritesOnlyItsOwnKeys) {
  const std::string job = "job-secret";
  auto s = RendezvousServer::start("127.0.0.1", 0, job);
  ASSERT_TRUE(s);
  const uint16_t port = (*s)->port();
  auto admin = RendezvousClient::connect("127.0.0.1", port, job, in_ms(5000));
  auto t3 = RendezvousClient::connect("127.0.0.1", port, peer_token(job, "trainer/3"), in_ms(5000));
  ASSERT_TRUE(admin && t3) << (t3 ? "" : t3.status().message());
  EXPECT_TRUE((*t3)->put("trainer/3/send", "mine"));
  EXPECT_TRUE((*admin)->put("inference/0/region", "receiver's"));
  EXPECT_TRUE((*admin)->put("job/part/trainer/3", "the controller's"));
  for (const char* other : {"trainer/4/send", "trainer/30/send", "inference/0/region",
                            "job/part/trainer/3", "gone", "trainer/3"}) {
    Status st = (*t3)->put(other, "forged");
    EXPECT_FALSE(st) << other;
    EXPECT_NE(st.message().find("may"), std::string::npos) << st.message();
    EXPECT_FALSE((*t3)->del(other)) << other;
  }
  EXPECT_FALSE((*admin)->put("gone", "forged"));
  // Nothing was overwritten, and the session survived the refusals.
  EXPECT_EQ(text((*admin)->get("inference/0/region", in_ms(1000)).value()), "receiver's");
  EXPECT_EQ(text((*t3)->get("trainer/3/send", in_ms(1000)).value()), "mine");
  // A session name is its own identity's; a token for another job, or edited, is refused.
  EXPECT_TRUE((*t3)->identify("trainer/3@77"));
  EXPECT_FALSE((*t3)->identify("trainer/4@77"));
  for (const std::string& bad :
       {peer_token("other-job", "trainer/3"), peer_token(job, "trainer/3") + "0",
        std::string("wcp1:trainer/4:") + peer_token(job, "trainer/3").substr(15)}) {
    auto c = RendezvousClient::connect("127.0.0.1", port, bad, in_ms(5000));
    EXPECT_FALSE(c) << bad;
  }
  // Deleting its own key works and the value is gone.
  EXPECT_TRUE((*t3)->del("trainer/3/send"));
  EXPECT_FALSE((*t3)->get("trainer/3/send", in_ms(100)));
}

TEST(Rendezvous, TheStoreAndTheClientCountAreCapped) {
  RendezvousLimits lim;
  lim.max_value = 4096;
  lim.max_store_bytes = 64 * 1024;
  lim.max_clients = 8;
  lim.max_buffered_bytes = 8192;  // two frames in flight: the others wait their turn
  auto s = RendezvousServer::start("127.0.0.1", 0, "tok", lim);
  ASSERT_TRUE(s);
  std::vector<std::unique_ptr<RendezvousClient>> c;
  for (int i = 0; i < 8; ++i)
    c.push_back(RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(5000)).value());
  // (a client asks again while the server is full, until its deadline)
  auto ninth = RendezvousClient::connect("127.0.0.1", (*s)->port(), "tok", in_ms(300));
  ASSERT_FALSE(ninth);
  EXPECT_NE(ninth.status().message().find("max_clients"), std::string::npos)
      << ninth.status().message();
  // Eight clients put 4 KiB values at once through an 8 KiB input budget: all are served.
  const std::vector<uint8_t> v(4000, 7);
  std::vector<std::thread> t;
  std::atomic<int> stored{0}, full{0};
  for (int i = 0; i < 8; ++i)
    t.emplace_back([&, i] {
      for (int k = 0; k < 4; ++k) {
        Status st = c[static_cast<size_t>(i)]->put(fmt::format("v/{}/{}", i, k), v);
        if (st)
          ++stored;
        else if (st.message().find("store full") != std::string::npos)
          ++full;
      }
    });
  for (auto& th : t) th.join();
  EXPECT_EQ(stored + full, 32);
  EXPECT_GT(full, 0);  // 32 x 4 KiB does not fit in 64 KiB
  EXPECT_LE((*s)->stats().stored_bytes, lim.max_store_bytes);
  // Deleting makes room again; the refused clients kept their sessions.
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 8; ++i) (void)c[0]->del(fmt::format("v/{}/{}", i, k));
  EXPECT_EQ((*s)->stats().keys, 0u);
  for (auto& cl : c) EXPECT_TRUE(cl->put("again", v));
}

TEST(Rendezvous, RunningOutOfFileDescriptorsBacksOffAndRecovers) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // the server, in a process that has only 48 descriptors
    RendezvousLimits lim;
    lim.max_clients = 16;
    auto s = RendezvousServer::start("127.0.0.1", 0, "tok", lim);
    if (!s) _exit(3);
    rlimit r{48, 48};
    setrlimit(RLIMIT_NOFILE, &r);
    const uint16_t port = (*s)->port();
    (void)!write(pipe_fds[1], &port, sizeof port);
    pause();
    _exit(0);
  }
  struct Reap {  // the server process goes whatever the test's outcome
    pid_t pid;
    ~Reap() {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  } reap{child};
  uint16_t port = 0;
  ASSERT_EQ(read(pipe_fds[0], &port, sizeof port), static_cast<ssize_t>(sizeof port));
  // 200 sockets at once: the server runs out of descriptors long before it has accepted them.
  std::vector<int> storm;
  for (int i = 0; i < 200; ++i) storm.push_back(dial(port));
  for (int fd : storm) close(fd);
  int status = 0;
  EXPECT_EQ(waitpid(child, &status, WNOHANG), 0) << "the server died";
  // Once they are gone a real peer is served.
  auto c = RendezvousClient::connect("127.0.0.1", port, "tok", in_ms(20000));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_TRUE((*c)->put("alive", "yes"));
  EXPECT_EQ(text((*c)->get("alive", in_ms(1000)).value()), "yes");
  EXPECT_EQ(waitpid(child, &status, WNOHANG), 0) << "the server died";
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

}  // namespace
}  // namespace weightcast::transport
