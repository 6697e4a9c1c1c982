// A transport test peer: one real process (sender or receiver) of a scenario, talking through
// the rendezvous and writing over a real libfabric provider. Prints "PASS ..." and exits 0 when
// its checks hold; prints the failure and exits 1 otherwise. Driven by fabric_test.cpp.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <thread>

#include "weightcast/transport/progress.h"
#include "weightcast/transport/rendezvous.h"

using namespace weightcast;             // NOLINT
using namespace weightcast::transport;  // NOLINT
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
  std::exit(1);
}
template <typename T>
T must(Result<T> r, const char* what) {
  if (!r) die(std::string(what) + ": " + r.status().message());
  return std::move(r).value();
}
void must(const Status& s, const char* what) {
  if (!s) die(std::string(what) + ": " + s.message());
}

uint8_t pattern(uint8_t gen, uint64_t off) {
  return static_cast<uint8_t>((off * 131 + gen * 71 + (off >> 9)) ^ (off >> 17));
}

struct Peer {
  std::string role, scenario, token, rdv_host, provider = "tcp", backend = "fabric";
  uint16_t rdv_port = 0;
  int id = 0, senders = 1;
  uint64_t max_write = 16ull << 20, max_size = 256ull << 20;
  std::vector<std::string> nics;
  ImmCounters counters;
  std::unique_ptr<ProgressEngine> engine;
  std::unique_ptr<RendezvousClient> rdv;

  Clock::time_point in(double s) {
    return Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
  }

  void setup() {
    std::vector<DomainConfig> cfg;
    for (const auto& nic : nics) {
      DomainConfig c;
      c.backend = backend;
      c.provider = backend == "verbs" ? nic : provider;  // verbs: a device name per NIC
      c.address = backend == "verbs" ? "" : nic;         // fabric: a local IP per NIC
      c.max_write = max_write;
      c.rank = role == "receiver" ? 0 : static_cast<uint32_t>(id + 1);  // verbs QP slot
      cfg.push_back(c);
    }
    engine = must(ProgressEngine::start(cfg, &counters), "open NICs");
    rdv = must(RendezvousClient::connect(rdv_host, rdv_port, token, in(20)), "rendezvous");
  }
  std::vector<uint8_t> get(const std::string& k, double secs = 60) {
    return must(rdv->get(k, in(secs)), k.c_str());
  }
  void put(const std::string& k, const std::string& v = "1") { must(rdv->put(k, v), k.c_str()); }
  void put(const std::string& k, const std::vector<uint8_t>& v) { must(rdv->put(k, v), k.c_str()); }

  // Receiver side of set-up: register, publish address and descriptor, accept senders.
  Region recv_region(std::vector<uint8_t>& buf) {
    Region r = must(engine->register_memory(buf.data(), buf.size(), MemKind::kHost), "register");
    put("recv/addr", engine->address());
    put("recv/region", NicGroup::remote(r).serialize());
    for (int s = 0; s < senders; ++s)
      must(engine->connect(get("send" + std::to_string(s) + "/addr")), "connect");
    return r;
  }
  // Sender side: register, publish address, connect to the receiver, fetch its descriptor.
  std::pair<Region, RemoteRegion> send_region(std::vector<uint8_t>& buf, uint32_t& peer) {
    Region r = must(engine->register_memory(buf.data(), buf.size(), MemKind::kHost), "register");
    put("send" + std::to_string(id) + "/addr", engine->address());
    peer = must(engine->connect(get("recv/addr")), "connect");
    RemoteRegion rr = must(RemoteRegion::parse(get("recv/region")), "descriptor");
    return {r, rr};
  }
  uint32_t imm(uint8_t gen, uint8_t phase = 0) const {
    return Imm{gen, phase, static_cast<uint16_t>(id)}.encode();
  }
  uint64_t nicn() const { return imms_per_write(static_cast<uint32_t>(nics.size())); }
};

const uint64_t kSizes[] = {1, 7, 4096, 65536 + 3, 1 << 20, (16 << 20) + 5, 64 << 20, 256 << 20};
constexpr uint64_t kGuard = 64;

void sizes_receiver(Peer& p) {
  std::vector<uint8_t> buf(p.max_size + 2 * kGuard);
  Region r = p.recv_region(buf);
  uint8_t gen = 1;
  for (uint64_t size : kSizes) {
    if (size > p.max_size) break;
    const uint64_t off = kGuard - (size % 2);  // odd sizes land at an odd offset
    std::memset(buf.data(), 0xEE, buf.size());
    p.counters.begin_generation(gen);
    p.put("ready/" + std::to_string(gen));
    must(p.counters.wait(gen, {{0, 0, p.nicn()}}, p.in(120)), "imm barrier");
    for (uint64_t i = 0; i < size; ++i)
      if (buf[off + i] != pattern(gen, i))
        die("size " + std::to_string(size) + ": byte " + std::to_string(i) + " differs");
    if (buf[off - 1] != 0xEE || buf[off + size] != 0xEE)
      die("size " + std::to_string(size) + ": guard byte overwritten");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (p.counters.count(gen, 0, 0) != 0) die("extra immediates after the barrier");
    p.put("verified/" + std::to_string(gen));
    ++gen;
  }
  (void)r;
  std::printf(
      "PASS sizes: %d sizes 1 B .. %lu MiB landed byte-exact over %zu NIC(s) (%s), %lu imms per "
      "write\n",
      gen - 1, static_cast<unsigned long>(p.max_size >> 20), p.nics.size(),
      p.engine->caps().provider.c_str(), static_cast<unsigned long>(p.nicn()));
}

void sizes_sender(Peer& p) {
  std::vector<uint8_t> buf(p.max_size);
  uint32_t peer;
  auto [r, rr] = p.send_region(buf, peer);
  uint8_t gen = 1;
  uint64_t pieces = 0;  // NIC writes expected once long shards are split at max_write
  const uint64_t piece = std::min(p.max_write, p.engine->caps().max_msg);
  for (uint64_t size : kSizes) {
    if (size > p.max_size) break;
    for (const Shard& sh : stripe(size, static_cast<uint32_t>(p.nics.size())))
      pieces += sh.len == 0 ? 1 : (sh.len + piece - 1) / piece;
    for (uint64_t i = 0; i < size; ++i) buf[i] = pattern(gen, i);
    p.get("ready/" + std::to_string(gen));
    const uint64_t off = kGuard - (size % 2);
    const uint64_t b = p.engine->submit({{&r, 0, peer, &rr, off, size, true, p.imm(gen)}});
    must(p.engine->wait(b, p.in(120)), "write batch");
    p.get("verified/" + std::to_string(gen), 120);
    ++gen;
  }
  const ProgressStats st = p.engine->stats();
  if (st.shards_posted != pieces || st.shards_done != pieces)
    die("expected " + std::to_string(pieces) + " NIC writes, posted " +
        std::to_string(st.shards_posted) + ", completed " + std::to_string(st.shards_done));
  std::printf("PASS sender: %lu writes as %lu NIC writes of <= %lu B\n",
              static_cast<unsigned long>(st.writes), static_cast<unsigned long>(pieces),
              static_cast<unsigned long>(piece));
}

// Credits, exact release, reuse, stale generations and deadlines.
void barrier_receiver(Peer& p) {
  std::vector<uint8_t> buf(1 << 16);
  p.counters.begin_generation(5);
  p.recv_region(buf);
  const uint64_t n = 10 * p.nicn();
  p.get("partial");
  // Nine writes arrived (and three of the stale generation 4): the barrier must not release.
  Status s = p.counters.wait(5, {{0, 0, n}}, p.in(0.3));
  if (s.code() != Code::kTimeout) die("barrier released early: " + s.to_string());
  const std::string want =
      "sender 0 (phase 0: " + std::to_string(9 * p.nicn()) + " of " + std::to_string(n) + " imms)";
  if (s.message().find(want) == std::string::npos)
    die("deadline message lacks '" + want + "': " + s.message());
  if (p.counters.stale() != 3 * p.nicn()) die("stale count " + std::to_string(p.counters.stale()));
  p.put("checked");
  must(p.counters.wait(5, {{0, 0, n}}, p.in(30)), "barrier after the last write");
  // Credits were subtracted: the same tag again needs ten new writes.
  if (p.counters.count(5, 0, 0) != 0) die("credits not subtracted");
  p.put("again");
  must(p.counters.wait(5, {{0, 0, n}}, p.in(30)), "barrier reuse");
  std::printf(
      "PASS barrier: early wait timed out naming the sender, released on the last imm, stale "
      "ignored, credits reused\n");
}

void barrier_sender(Peer& p) {
  std::vector<uint8_t> buf(1 << 16);
  uint32_t peer;
  auto regions = p.send_region(buf, peer);
  auto& r = regions.first;  // (references, not a structured binding: the lambda uses them)
  auto& rr = regions.second;
  auto send = [&](int count, uint8_t gen) {
    std::vector<GroupWrite> ws;
    for (int k = 0; k < count; ++k)
      ws.push_back({&r, 0, peer, &rr, static_cast<uint64_t>(k) * 64, 64, true, p.imm(gen)});
    must(p.engine->wait(p.engine->submit(ws), p.in(30)), "writes");
  };
  send(3, 4);  // a stale generation
  send(9, 5);
  p.put("partial");
  p.get("checked");
  send(1, 5);
  p.get("again");
  send(10, 5);
  std::printf("PASS sender\n");
}

// Many more immediates than a receive queue holds (the verbs SRQ keeps 1024 receives posted and
// re-posts one per arrival): every one must be counted, exactly, and every byte land.
constexpr int kFlood = 5000;
void flood_receiver(Peer& p) {
  std::vector<uint8_t> buf(kFlood * 8, 0);
  p.counters.begin_generation(3);
  p.recv_region(buf);
  p.put("flood/ready");
  must(p.counters.wait(3, {{0, 0, kFlood * p.nicn()}}, p.in(120)), "imm barrier");
  for (int k = 0; k < kFlood; ++k)
    for (int b = 0; b < 8; ++b)
      if (buf[static_cast<size_t>(k * 8 + b)] != pattern(3, static_cast<uint64_t>(k * 8 + b)))
        die("write " + std::to_string(k) + " did not land");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (p.counters.count(3, 0, 0) != 0) die("extra immediates after the barrier");
  std::printf("PASS flood: %d writes, %lu immediates counted exactly\n", kFlood,
              static_cast<unsigned long>(kFlood * p.nicn()));
}

void flood_sender(Peer& p) {
  std::vector<uint8_t> buf(kFlood * 8);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = pattern(3, i);
  uint32_t peer;
  auto [r, rr] = p.send_region(buf, peer);
  p.get("flood/ready");
  std::vector<GroupWrite> ws;
  for (uint64_t k = 0; k < kFlood; ++k)
    ws.push_back({&r, k * 8, peer, &rr, k * 8, 8, true, p.imm(3)});
  must(p.engine->wait(p.engine->submit(ws), p.in(120)), "writes");
  std::printf("PASS sender\n");
}

// Connecting again to a peer that is already connected (a trainer links to another as a gather
// root and as a member) must keep the connection working, whichever side does it and while the
// other side has written before: generation 1 over the first connection, generation 2 after the
// receiver connected again, generation 3 after the sender did. Every byte is checked.
constexpr uint64_t kRelinkBytes = 1 << 16, kRelinkWrites = 8;
void relink_receiver(Peer& p) {
  std::vector<uint8_t> buf(kRelinkBytes, 0);
  p.recv_region(buf);
  const std::string sender = "send0/addr";
  for (uint8_t gen = 1; gen <= 3; ++gen) {
    p.counters.begin_generation(gen);
    if (gen == 2) must(p.engine->connect(p.get(sender)), "connect again");
    p.put("ready/" + std::to_string(gen));
    must(p.counters.wait(gen, {{0, 0, kRelinkWrites * p.nicn()}}, p.in(20)),
         ("imm barrier of generation " + std::to_string(gen)).c_str());
    for (uint64_t i = 0; i < buf.size(); ++i)
      if (buf[i] != pattern(gen, i))
        die("generation " + std::to_string(gen) + ": byte " + std::to_string(i) + " differs");
  }
  std::printf(
      "PASS relink: 3 generations byte-exact over connections made again by the receiver, then "
      "the sender\n");
}

void relink_sender(Peer& p) {
  std::vector<uint8_t> buf(kRelinkBytes);
  uint32_t peer;
  auto [r, rr] = p.send_region(buf, peer);
  for (uint8_t gen = 1; gen <= 3; ++gen) {
    if (gen == 3) peer = must(p.engine->connect(p.get("recv/addr")), "connect again");
    for (uint64_t i = 0; i < buf.size(); ++i) buf[i] = pattern(gen, i);
    p.get("ready/" + std::to_string(gen));
    std::vector<GroupWrite> ws;
    const uint64_t each = kRelinkBytes / kRelinkWrites;
    for (uint64_t k = 0; k < kRelinkWrites; ++k)
      ws.push_back({&r, k * each, peer, &rr, k * each, each, true, p.imm(gen)});
    must(p.engine->wait(p.engine->submit(ws), p.in(20)),
         ("writes of generation " + std::to_string(gen)).c_str());
  }
  std::printf("PASS sender\n");
}

// Two senders expected, one silent: the deadline names it.
void missing_receiver(Peer& p) {
  std::vector<uint8_t> buf(1 << 16);
  p.counters.begin_generation(1);
  p.recv_region(buf);
  // Sender 0's writes are complete (delivery complete: in this buffer) before the short deadline
  // starts, however long connection set-up took on a loaded machine.
  p.get("missing/s0-done");
  Status s = p.counters.wait(1, {{0, 0, 4 * p.nicn()}, {0, 1, 4 * p.nicn()}}, p.in(1.5));
  p.put("missing/r-done");
  if (s.code() != Code::kTimeout) die("expected a timeout, got " + s.to_string());
  if (s.message().find("sender 1 (phase 0: 0 of") == std::string::npos ||
      s.message().find("sender 0") != std::string::npos)
    die("message should name sender 1 only: " + s.message());
  std::printf("PASS missing: %s\n", s.message().c_str());
}

void missing_sender(Peer& p) {
  std::vector<uint8_t> buf(1 << 16);
  uint32_t peer;
  auto [r, rr] = p.send_region(buf, peer);
  if (p.id == 1) {
    p.get("missing/r-done");  // silent until the receiver's deadline has passed
  } else {
    std::vector<GroupWrite> ws(4, GroupWrite{&r, 0, peer, &rr, 0, 128, true, p.imm(1)});
    must(p.engine->wait(p.engine->submit(ws), p.in(30)), "writes");
    p.put("missing/s0-done");
  }
  std::printf("PASS sender\n");
}

// The peer dies mid-transfer (the test kills it): the survivor must get an error or a deadline,
// never hang.
void kill_receiver(Peer& p) {
  std::vector<uint8_t> buf(64 << 20);
  p.counters.begin_generation(1);
  p.recv_region(buf);
  if (p.scenario == "kill-receiver") {  // we are the victim: keep polling until killed
    p.put("receiving");
    std::this_thread::sleep_for(std::chrono::seconds(60));
    die("receiver was not killed");
  }
  p.put("receiving");
  const auto t0 = Clock::now();
  Status s = p.counters.wait(1, {{0, 0, 1000000}}, p.in(3));
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  if (s.code() != Code::kTimeout || took > 10)
    die("expected a deadline error in time, got " + s.to_string());
  std::printf("PASS survivor receiver: %.1f s, %s\n", took, s.message().substr(0, 120).c_str());
}

void kill_sender(Peer& p) {
  std::vector<uint8_t> buf(64 << 20);
  uint32_t peer;
  auto [r, rr] = p.send_region(buf, peer);
  p.get("receiving");
  if (p.scenario == "kill-sender") {  // we are the victim: stream until killed
    for (uint64_t k = 0;; ++k)
      (void)p.engine->wait(p.engine->submit({{&r, 0, peer, &rr, 0, 64 << 20, true, p.imm(1)}}),
                           p.in(30));
  }
  // Survivor sender: keeps writing while the receiver dies; once it is gone the writes must fail
  // or time out, never hang.
  const auto t0 = Clock::now();
  Status last;
  int ok = 0;
  while (last.is_ok() && Clock::now() - t0 < std::chrono::seconds(60)) {
    last = p.engine->wait(p.engine->submit({{&r, 0, peer, &rr, 0, 16 << 20, true, p.imm(1)}}),
                          p.in(5));
    ok += last.is_ok();
  }
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  if (last.is_ok()) die("writes to a dead receiver kept succeeding for 60 s");
  std::printf("PASS survivor sender: %d writes landed, then failed after %.1f s: %s\n", ok, took,
              last.message().substr(0, 160).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Peer p;
  std::string rdv, nics = "127.0.0.1";
  CLI::App app{"weightcast transport test peer"};
  app.add_option("--role", p.role)->required()->check(CLI::IsMember({"sender", "receiver"}));
  app.add_option("--scenario", p.scenario)->required();
  app.add_option("--rdv", rdv, "rendezvous host:port")->required();
  app.add_option("--token", p.token)->required();
  app.add_option("--id", p.id);
  app.add_option("--senders", p.senders);
  app.add_option("--nics", nics, "comma-separated NICs: local IPs (fabric) or devices (verbs)");
  app.add_option("--provider", p.provider, "libfabric provider, or verbs device name");
  app.add_option("--backend", p.backend)->check(CLI::IsMember({"fabric", "verbs", "ipc"}));
  app.add_option("--max-write", p.max_write, "split NIC writes above this many bytes");
  app.add_option("--max-size", p.max_size, "largest write of the sizes scenario");
  CLI11_PARSE(app, argc, argv);
  p.rdv_host = rdv.substr(0, rdv.find(':'));
  p.rdv_port = static_cast<uint16_t>(std::stoi(rdv.substr(rdv.find(':') + 1)));
  for (size_t pos = 0; pos <= nics.size();) {
    const size_t c = nics.find(',', pos);
    p.nics.push_back(nics.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  p.setup();
  const bool recv = p.role == "receiver";
  if (p.scenario == "sizes")
    recv ? sizes_receiver(p) : sizes_sender(p);
  else if (p.scenario == "barrier")
    recv ? barrier_receiver(p) : barrier_sender(p);
  else if (p.scenario == "flood")
    recv ? flood_receiver(p) : flood_sender(p);
  else if (p.scenario == "relink")
    recv ? relink_receiver(p) : relink_sender(p);
  else if (p.scenario == "missing")
    recv ? missing_receiver(p) : missing_sender(p);
  else if (p.scenario == "kill-sender" || p.scenario == "kill-receiver")
    recv ? kill_receiver(p) : kill_sender(p);
  else
    die("unknown scenario " + p.scenario);
  std::fflush(stdout);
  return 0;
}
