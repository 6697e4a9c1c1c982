// One-sided write bandwidth between two processes for message sizes 64 KiB .. 64 MiB and 1, 2, 4
// NICs, against a plain TCP socket stream between the same two processes, measured in the same
// run. Every write carries an immediate and a round ends only when the receiver has counted all
// of them. Default: libfabric tcp;ofi_rxm on loopback endpoints 127.0.0.1..4; --backend verbs
// --nic-list rxe0,rxe1 runs it over ibverbs (the Soft-RoCE VM, scripts/verbs-vm.sh --bench).
//   transport_bw [--mib N] [--backend fabric|verbs] [--provider P] [--nic-list a,b,...]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>

#include "harness.h"
#include "weightcast/transport/progress.h"
#include "weightcast/transport/rendezvous.h"

using namespace weightcast;             // NOLINT
using namespace weightcast::transport;  // NOLINT
using Clock = std::chrono::steady_clock;

namespace {

const uint64_t kSizes[] = {64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20};
std::vector<int> g_nic_counts = {1, 2, 4};
constexpr uint64_t kBuf = 64 << 20;
uint64_t g_total = 512ull << 20;
std::string g_backend = "fabric", g_provider = "tcp";
std::vector<std::string> g_nic_list = {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"};

auto in_s(double s) {
  return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}
template <typename T>
T must(Result<T> r) {
  if (!r) {
    std::fprintf(stderr, "transport_bw: %s\n", r.status().message().c_str());
    std::exit(1);
  }
  return std::move(r).value();
}
void must(const Status& s) {
  if (!s) {
    std::fprintf(stderr, "transport_bw: %s\n", s.message().c_str());
    std::exit(1);
  }
}
std::vector<DomainConfig> nics(int k, uint32_t rank) {
  std::vector<DomainConfig> v;
  for (int i = 0; i < k; ++i) {
    DomainConfig c;
    const std::string& nic = g_nic_list[static_cast<size_t>(i)];
    c.backend = g_backend;
    c.provider = g_backend == "verbs" ? nic : g_provider;
    c.address = g_backend == "verbs" ? "" : nic;
    c.rank = rank;  // verbs QP slot: receiver 0, sender 1
    v.push_back(c);
  }
  return v;
}
std::string key(const char* what, int k, uint64_t size) {
  return fmt::format("{}/{}/{}", what, k, size);
}
uint64_t count_for(uint64_t size) { return std::max<uint64_t>(1, g_total / size); }

int receiver(uint16_t port) {
  auto rdv = must(RendezvousClient::connect("127.0.0.1", port, "bw", in_s(20)));
  std::vector<uint8_t> buf(kBuf);
  for (int k : g_nic_counts) {
    ImmCounters counters;
    auto eng = must(ProgressEngine::start(nics(k, 0), &counters));
    Region r = must(eng->register_memory(buf.data(), buf.size(), MemKind::kHost));
    must(rdv->put(fmt::format("raddr/{}", k), eng->address()));
    must(rdv->put(fmt::format("rregion/{}", k), NicGroup::remote(r).serialize()));
    must(eng->connect(must(rdv->get(fmt::format("saddr/{}", k), in_s(30)))));
    uint8_t gen = 0;
    for (uint64_t size : kSizes)
      for (int rep = 0; rep < 3; ++rep) {  // rep 0 warms the connection up
        counters.begin_generation(++gen);
        must(rdv->put(key("ready", k, size) + std::to_string(rep), "1"));
        must(counters.wait(gen, {{0, 0, count_for(size) * imms_per_write(k)}}, in_s(120)));
        must(rdv->put(key("done", k, size) + std::to_string(rep), "1"));
      }
  }
  // TCP baseline: accept, read everything, ack each round with one byte.
  const int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a);
  listen(ls, 1);
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  must(rdv->put("tcpport", std::to_string(ntohs(a.sin_port))));
  const int fd = accept(ls, nullptr, nullptr);
  for (uint64_t size : kSizes)
    for (int rep = 0; rep < 3; ++rep) {
      uint64_t left = count_for(size) * size;
      while (left > 0) {
        const ssize_t n = recv(fd, buf.data(), std::min<uint64_t>(left, kBuf), 0);
        if (n <= 0) return 1;
        left -= static_cast<uint64_t>(n);
      }
      const char ack = 1;
      if (send(fd, &ack, 1, 0) != 1) return 1;
    }
  close(fd);
  close(ls);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"transport_bw: one-sided write GB/s per NIC count vs a TCP stream, one run"};
  uint64_t mib = g_total >> 20;
  std::string list;
  app.add_option("--mib", mib, "MiB written per measured point")->capture_default_str();
  app.add_option("--backend", g_backend, "fabric or verbs")
      ->capture_default_str()
      ->check(CLI::IsMember({"fabric", "verbs"}));
  app.add_option("--provider", g_provider, "libfabric provider (fabric backend)")
      ->capture_default_str();
  app.add_option("--nic-list", list,
                 "comma-separated NICs, 1 to 4: local IPs (fabric) or RDMA devices (verbs); "
                 "default 127.0.0.1..4");
  CLI11_PARSE(app, argc, argv);
  g_total = mib << 20;
  if (!list.empty()) {
    g_nic_list.clear();
    std::istringstream ss(list);
    for (std::string x; std::getline(ss, x, ',');) g_nic_list.push_back(x);
  }
  if (g_nic_list.empty() || g_nic_list.size() > 4) {
    std::fprintf(stderr, "transport_bw: --nic-list takes 1 to 4 NICs\n");
    return 2;
  }
  g_nic_counts.clear();
  for (int k : {1, 2, 4})
    if (static_cast<size_t>(k) <= g_nic_list.size()) g_nic_counts.push_back(k);
  int pipefd[2];
  if (pipe(pipefd) != 0) return 1;
  const pid_t child = fork();
  if (child == 0) {  // the receiver: learns the rendezvous port from the parent
    uint16_t port = 0;
    if (read(pipefd[0], &port, sizeof port) != sizeof port) _exit(1);
    _exit(receiver(port));
  }
  auto server = must(RendezvousServer::start("127.0.0.1", 0, "bw"));
  const uint16_t port = server->port();
  if (write(pipefd[1], &port, sizeof port) != sizeof port) return 1;
  auto rdv = must(RendezvousClient::connect("127.0.0.1", port, "bw", in_s(20)));
  std::vector<uint8_t> buf(kBuf, 0x5a);
  std::map<std::pair<int, uint64_t>, double> gbps;  // (nics, size) -> best GB/s; nics 0 = TCP
  std::string provider;
  for (int k : g_nic_counts) {
    ImmCounters counters;
    auto eng = must(ProgressEngine::start(nics(k, 1), &counters));
    provider = eng->caps().provider;
    Region r = must(eng->register_memory(buf.data(), buf.size(), MemKind::kHost));
    must(rdv->put(fmt::format("saddr/{}", k), eng->address()));
    const uint32_t peer = must(eng->connect(must(rdv->get(fmt::format("raddr/{}", k), in_s(30)))));
    const RemoteRegion rr =
        must(RemoteRegion::parse(must(rdv->get(fmt::format("rregion/{}", k), in_s(30)))));
    uint8_t gen = 0;
    for (uint64_t size : kSizes)
      for (int rep = 0; rep < 3; ++rep) {
        ++gen;
        std::vector<GroupWrite> ws;
        const uint64_t n = count_for(size);
        for (uint64_t i = 0; i < n; ++i)
          ws.push_back({&r, 0, peer, &rr, (i * size) % (kBuf - size + 1), size, true,
                        Imm{gen, 0, 0}.encode()});
        must(rdv->get(key("ready", k, size) + std::to_string(rep), in_s(60)));
        const double t0 = perf::now_s();
        must(eng->wait(eng->submit(std::move(ws)), in_s(120)));
        must(rdv->get(key("done", k, size) + std::to_string(rep), in_s(120)));
        const double gb = static_cast<double>(n * size) / (perf::now_s() - t0) / 1e9;
        if (rep > 0) gbps[{k, size}] = std::max(gbps[{k, size}], gb);
      }
  }
  const int port_tcp = std::stoi([&] {
    auto v = must(rdv->get("tcpport", in_s(30)));
    return std::string(v.begin(), v.end());
  }());
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port_tcp));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 1;
  for (uint64_t size : kSizes)
    for (int rep = 0; rep < 3; ++rep) {
      const uint64_t n = count_for(size);
      const double t0 = perf::now_s();
      for (uint64_t i = 0; i < n; ++i) {
        const uint8_t* p = buf.data() + (i * size) % (kBuf - size + 1);
        uint64_t left = size;
        while (left > 0) {
          const ssize_t w = send(fd, p, left, 0);
          if (w <= 0) return 1;
          p += w;
          left -= static_cast<uint64_t>(w);
        }
      }
      char ack;
      if (recv(fd, &ack, 1, MSG_WAITALL) != 1) return 1;
      const double gb = static_cast<double>(n * size) / (perf::now_s() - t0) / 1e9;
      if (rep > 0) gbps[{0, size}] = std::max(gbps[{0, size}], gb);
    }
  close(fd);
  int st = 0;
  waitpid(child, &st, 0);
  std::printf(
      "transport_bw: %s one-sided writes with imm vs a TCP socket stream, same two processes, "
      "%llu MiB per point, best of 2 after a warm-up\n",
      provider.c_str(), static_cast<unsigned long long>(g_total >> 20));
  std::printf("%10s %10s %10s %10s %10s %14s\n", "size", "TCP GB/s", "1 NIC", "2 NICs", "4 NICs",
              "1 NIC / TCP");
  double worst = 1e9;
  for (uint64_t size : kSizes) {
    const double ratio = gbps[{1, size}] / gbps[{0, size}];
    if (size >= (1 << 20)) worst = std::min(worst, ratio);
    auto cell = [&](int k) {  // "-" for NIC counts this run did not measure
      return gbps.count({k, size}) ? fmt::format("{:10.2f}", gbps[{k, size}])
                                   : fmt::format("{:>10}", "-");
    };
    std::printf("%9lluK %10.2f %s %s %s %13.2fx\n", static_cast<unsigned long long>(size >> 10),
                gbps[{0, size}], cell(1).c_str(), cell(2).c_str(), cell(4).c_str(), ratio);
  }
  perf::ratio("worst 1-NIC ratio at >= 1 MiB", worst, 0.9, "x", "target >= 1.0 of 0.9x TCP");
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
