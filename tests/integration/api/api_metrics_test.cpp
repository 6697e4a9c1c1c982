// What a running job shows its operator: the controller's Prometheus endpoint (every peer's last
// step, totals, who went away), the per-step records it is built from, and the log lines peers
// write, on the demo-moe job with real tcp;ofi_rxm endpoints on loopback.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <numeric>
#include <sstream>

#include "api_job.h"
#include "weightcast/core/log.h"
#include "weightcast/session/keys.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::api {
namespace {

using apitest::Job;
using apitest::Recv;
using apitest::Send;
using apitest::step_all;

// Sends `request` to 127.0.0.1:port and returns everything the server answered.
std::string http(uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  ::shutdown(fd, SHUT_WR);
  std::string out;
  char b[4096];
  for (ssize_t n; (n = ::recv(fd, b, sizeof b, 0)) > 0;) out.append(b, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// The samples of a Prometheus text body: "name{labels}" -> value; every family has its HELP and
// TYPE lines before its samples (checked).
std::map<std::string, double> samples(const std::string& response) {
  std::map<std::string, double> out;
  const size_t body = response.find("\r\n\r\n");
  EXPECT_NE(body, std::string::npos);
  std::istringstream is(response.substr(body + 4));
  std::set<std::string> typed;
  for (std::string line; std::getline(is, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      typed.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    const std::string key = line.substr(0, sp);
    EXPECT_TRUE(typed.count(key.substr(0, key.find('{')))) << "no TYPE before " << line;
    out[key] = std::stod(line.substr(sp + 1));
  }
  return out;
}

std::string peer(const char* role, uint32_t rank) {
  return fmt::format("role=\"{}\",rank=\"{}\"", role, rank);
}

struct Logs {
  std::mutex mu;
  std::vector<std::string> lines;
  Logs() {
    core::log::set_level(core::log::Level::kInfo);
    core::log::set_sink_for_tests([this](core::log::Level, const std::string& s) {
      std::lock_guard<std::mutex> g(mu);
      lines.push_back(s);
    });
  }
  ~Logs() {
    core::log::set_sink_for_tests({});
    core::log::set_level(core::log::Level::kWarn);
  }
  size_t count(const std::string& part) {
    std::lock_guard<std::mutex> g(mu);
    size_t n = 0;
    for (const std::string& l : lines) n += l.find(part) != std::string::npos;
    return n;
  }
};

TEST(ApiMetrics, TheControllerServesEveryPeersStepsAndNamesTheOnesThatWentAway) {
  Logs logs;
  Job j;
  ASSERT_TRUE(j.ctl);
  auto port = j.ctl->serve_metrics();
  ASSERT_TRUE(port) << port.status().message();
  EXPECT_FALSE(j.ctl->serve_metrics());  // once
  std::vector<Recv> rs(j.ctl->receivers());
  std::vector<Send> ss(j.ctl->senders());
  ASSERT_GE(rs.size(), 2u);
  {
    // Before anyone joined: every peer is down, nothing else is known of it.
    auto m = samples(http(*port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(m[fmt::format("weightcast_peers{{role=\"trainer\"}}")], ss.size());
    EXPECT_EQ(m[fmt::format("weightcast_peers{{role=\"inference\"}}")], rs.size());
    EXPECT_EQ(m.at(fmt::format("weightcast_peer_up{{{}}}", peer("inference", 0))), 0);
    EXPECT_FALSE(m.count(fmt::format("weightcast_step{{{}}}", peer("trainer", 0))));
  }
  Status st = apitest::open_all(j, rs, ss);
  ASSERT_TRUE(st) << st.message();
  for (uint64_t step = 1; step <= 2; ++step) {
    auto bad = step_all(j, rs, ss, step);
    ASSERT_TRUE(bad.empty()) << bad.front();
  }
  // Receiver 0 restarts between steps 2 and 3: its senders reconnect, say so and log it.
  rs[0].r.reset();
  st = rs[0].open(j.cfg, 0);
  ASSERT_TRUE(st) << st.message();
  auto bad = step_all(j, rs, ss, 3);
  ASSERT_TRUE(bad.empty()) << bad.front();

  const std::string text = http(*port, "GET /metrics HTTP/1.0\r\n\r\n");
  ASSERT_EQ(text.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << text.substr(0, 200);
  EXPECT_NE(text.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  auto m = samples(text);
  uint32_t reconnected = 0;
  for (uint32_t s = 0; s < ss.size(); ++s) {
    const std::string who = peer("trainer", s);
    EXPECT_EQ(m.at(fmt::format("weightcast_peer_up{{{}}}", who)), 1);
    EXPECT_EQ(m.at(fmt::format("weightcast_step{{{}}}", who)), 3);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_ok{{{}}}", who)), 1);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_attempt{{{}}}", who)), 1);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_bytes{{{}}}", who)), ss[s].last.bytes);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_writes{{{}}}", who)), ss[s].last.writes);
    EXPECT_EQ(m.at(fmt::format("weightcast_steps_total{{{},result=\"ok\"}}", who)), 3);
    EXPECT_EQ(m.at(fmt::format("weightcast_steps_total{{{},result=\"failed\"}}", who)), 0);
    EXPECT_EQ(m.at(fmt::format("weightcast_bytes_total{{{}}}", who)), 3.0 * ss[s].last.bytes);
    EXPECT_TRUE(m.count(fmt::format("weightcast_step_stage_seconds{{{},stage=\"gather\"}}", who)));
    // Per NIC: the bytes this rank posted, as the stats say.
    ASSERT_FALSE(ss[s].last.nic_bytes.empty());
    for (size_t n = 0; n < ss[s].last.nic_bytes.size(); ++n)
      EXPECT_EQ(m.at(fmt::format("weightcast_step_nic_bytes{{{},nic=\"{}\"}}", who, n)),
                ss[s].last.nic_bytes[n]);
    EXPECT_GE(
        std::accumulate(ss[s].last.nic_bytes.begin(), ss[s].last.nic_bytes.end(), uint64_t{0}),
        ss[s].last.bytes);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_staging_peak_bytes{{{}}}", who)),
              ss[s].last.staging_peak_bytes);
    reconnected += ss[s].last.reconnected;
    EXPECT_EQ(m.at(fmt::format("weightcast_step_reconnected_receivers{{{}}}", who)),
              ss[s].last.reconnected);
  }
  EXPECT_GE(reconnected, 1u);  // receiver 0 has senders, and each reconnected once
  EXPECT_EQ(logs.count("restarted (incarnation"), reconnected);
  uint64_t peak = 0;
  for (const Send& s : ss) peak = std::max(peak, s.last.staging_peak_bytes);
  EXPECT_GT(peak, 0u);  // the moe job projects into staging
  for (uint32_t r = 0; r < rs.size(); ++r) {
    const std::string who = peer("inference", r);
    EXPECT_EQ(m.at(fmt::format("weightcast_step{{{}}}", who)), 3);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_bytes{{{}}}", who)), rs[r].last.bytes);
    EXPECT_EQ(m.at(fmt::format("weightcast_step_immediates{{{}}}", who)), rs[r].last.immediates);
    // Receiver 0's process is new: its totals count its own one step.
    EXPECT_EQ(m.at(fmt::format("weightcast_steps_total{{{},result=\"ok\"}}", who)), r ? 3 : 1);
  }
  EXPECT_GT(m.at("weightcast_rendezvous_clients"), 0);
  // Every peer logged each step at info, tagged with who and the step.
  EXPECT_EQ(logs.count(" step 3: attempt 1:"), rs.size() + ss.size());
  EXPECT_GE(logs.count("inference 1 inc"), 4u);  // joined + 3 steps

  // Receiver 1 goes away for good: named at once, by the endpoint and by lost_peers.
  rs[1].r.reset();
  bool named = false;
  for (int i = 0; i < 3000 && !named; ++i) {
    auto lost = j.ctl->lost_peers();
    ASSERT_TRUE(lost) << lost.status().message();
    named = std::find(lost->begin(), lost->end(), "inference 1") != lost->end();
    if (!named) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(named);
  m = samples(http(*port, "GET /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(m.at(fmt::format("weightcast_peer_up{{{}}}", peer("inference", 1))), 0);
  EXPECT_EQ(m.at(fmt::format("weightcast_peer_up{{{}}}", peer("inference", 0))), 1);
  EXPECT_EQ(logs.count("controller: inference 1 went away"), 1u);  // once, however often asked

  // A record that is not a step record (a buggy peer) is named, and the rest still served.
  {
    const std::string host = j.cfg.rendezvous.substr(0, j.cfg.rendezvous.rfind(':'));
    auto c = transport::RendezvousClient::connect(
        host, static_cast<uint16_t>(std::stoi(j.cfg.rendezvous.substr(host.size() + 1))),
        j.cfg.token, std::chrono::steady_clock::now() + std::chrono::seconds(10));
    ASSERT_TRUE(c);
    ASSERT_TRUE((*c)->put(session::keys::metrics("inference", 1), "{not json"));
    ASSERT_TRUE((*c)->put(session::keys::metrics("trainer", 0),
                          R"({"step":"x","stages":{"a\"b":1,"c":"d"},"nic_bytes":[1,"z"]})"));
  }
  auto mt = j.ctl->metrics_text();
  ASSERT_TRUE(mt);
  m = samples("HTTP/1.1 200 OK\r\n\r\n" + *mt);
  EXPECT_EQ(m.at(fmt::format("weightcast_peer_record_malformed{{{}}}", peer("inference", 1))), 1);
  EXPECT_FALSE(m.count(fmt::format("weightcast_step{{{}}}", peer("trainer", 0))));
  EXPECT_EQ(
      m.at(fmt::format("weightcast_step_stage_seconds{{{},stage=\"a\\\"b\"}}", peer("trainer", 0))),
      1);
  EXPECT_EQ(m.at(fmt::format("weightcast_step_nic_bytes{{{},nic=\"0\"}}", peer("trainer", 0))), 1);
  EXPECT_EQ(m.at(fmt::format("weightcast_step{{{}}}", peer("trainer", 1))), 3);
}

TEST(ApiMetrics, TheEndpointAnswersOnlyGetMetricsAndSurvivesGarbage) {
  Job j;
  ASSERT_TRUE(j.ctl);
  auto port = j.ctl->serve_metrics("127.0.0.1", 0);
  ASSERT_TRUE(port);
  EXPECT_EQ(http(*port, "POST /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 405", 0), 0u);
  EXPECT_EQ(http(*port, "GET /other HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(http(*port, std::string("\x00\x01\x02\n\n", 5)).rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(http(*port, "GET\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(http(*port, std::string(20000, 'G')).rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(http(*port, "").rfind("HTTP/1.1 400", 0), 0u);  // closed before a request line
  const std::string head = http(*port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_EQ(head.find("# HELP"), std::string::npos);  // HEAD: no body
  EXPECT_EQ(http(*port, "GET /metrics?x=1 HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200", 0), 0u);
  auto again = j.ctl->serve_metrics("127.0.0.1", 0);
  ASSERT_FALSE(again);
  EXPECT_NE(again.status().message().find("already serving on port"), std::string::npos);
  // A bad bind address is named.
  JobConfig c2 = j.cfg;
  auto other = Controller::start(c2);
  ASSERT_TRUE(other);
  auto b2 = other->serve_metrics("not-an-address", 0);
  ASSERT_FALSE(b2);
  EXPECT_NE(b2.status().message().find("bad bind address 'not-an-address'"), std::string::npos)
      << b2.status().message();
}

}  // namespace
}  // namespace weightcast::api
