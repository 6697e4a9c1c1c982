// The rendezvous: a small TCP key-value service through which peers exchange address blobs and
// memory descriptors. One event-loop thread (epoll) serves every connection: thousands of peers
// held for hours, each with at most one request in flight. Length-prefixed frames; a client must
// present a token first (the job token, or a peer token that may write only its own keys); size,
// count and memory limits; malformed or oversized frames are answered with one error frame and
// the connection closed, never a crash. Run it standalone (`weightcast rendezvous`) or embedded.
// Limits, credentials and failure behaviour: docs/control-plane.md.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::transport {

struct RendezvousLimits {
  size_t max_key = 256;
  size_t max_value = 1 << 20;
  size_t max_clients = 8192;
  // Connections that have not presented a token yet; past this the oldest is evicted, so idle
  // sockets never lock peers out.
  size_t max_unauthenticated = 1024;
  size_t max_keys = 1 << 20;
  size_t max_store_bytes = size_t{512} << 20;  // keys + values (+64 B per key)
  // Frames being read, over all connections; a connection waits for room before its body is read.
  size_t max_buffered_bytes = size_t{64} << 20;
  // A connection must present a token within this long. Authenticated peers are never dropped
  // for being idle: RL steps are minutes apart (TCP keepalive finds dead ones).
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds max_wait{60000};  // one get's wait; clients ask again
};

// A credential for one peer ("trainer/3", "inference/0"): the bearer may write only keys under
// "trainer/3/" and name its session "trainer/3@...". Derived from the job token (HMAC-SHA256), so
// the server checks it without a table; hand each process its own, never the job token.
std::string peer_token(const std::string& job_token, const std::string& identity);

// A listening TCP socket on host:port (an IPv4 address; port 0: a free one), non-blocking and
// close-on-exec; `bound` gets its port, `who` names it in errors. The rendezvous and the
// controller's metrics endpoint listen on it.
Result<int> listen_tcp(const std::string& host, uint16_t port, uint16_t& bound, const char* who);

namespace rdv {
class Core;
}

class RendezvousServer {
 public:
  static constexpr size_t kGoneKept = 256;
  // Binds `host:port` (port 0 picks a free one).
  static Result<std::unique_ptr<RendezvousServer>> start(const std::string& host, uint16_t port,
                                                         std::string token,
                                                         RendezvousLimits limits = {});
  ~RendezvousServer();
  uint16_t port() const { return port_; }
  struct Stats {
    uint64_t connections = 0, rejected = 0, puts = 0, gets = 0, deletes = 0;
    uint64_t evicted = 0;        // unauthenticated connections closed to make room
    uint64_t denied = 0;         // puts refused because the store was full
    uint64_t accept_errors = 0;  // accept(2) failures (e.g. out of file descriptors), backed off
    uint64_t clients = 0, keys = 0, stored_bytes = 0;  // now
  };
  Stats stats() const;

 private:
  RendezvousServer() = default;
  void loop();

  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::unique_ptr<rdv::Core> core_;
  mutable std::mutex mu_;  // guards core_ against stats()
  uint64_t accept_errors_ = 0;
  std::thread thread_;
};

class RendezvousClient {
 public:
  using Clock = std::chrono::steady_clock;
  static Result<std::unique_ptr<RendezvousClient>> connect(const std::string& host, uint16_t port,
                                                           const std::string& token,
                                                           Clock::time_point deadline);
  ~RendezvousClient();
  Status put(const std::string& key, std::span<const uint8_t> value);
  Status put(const std::string& key, const std::string& value);
  Status del(const std::string& key);
  // Waits until the key exists (or the deadline passes: kTimeout naming the key).
  Result<std::vector<uint8_t>> get(const std::string& key, Clock::time_point deadline);
  // Every put gets a version from one server-wide counter that only grows. Waits until `key`
  // holds a value put after version `after` (0: any), and returns it with its version.
  struct Versioned {
    std::vector<uint8_t> value;
    uint64_t version = 0;
  };
  Result<Versioned> get_newer(const std::string& key, uint64_t after, Clock::time_point deadline);
  // Many keys in one round trip, without waiting: for each key, its value if one was put after
  // afters[i], else nothing (ask get_newer for those).
  Result<std::vector<std::optional<Versioned>>> newer_now(const std::vector<std::string>& keys,
                                                          const std::vector<uint64_t>& afters,
                                                          Clock::time_point deadline);
  // Puts and returns the version the server gave the value.
  Result<uint64_t> put_versioned(const std::string& key, std::span<const uint8_t> value);
  // Names this session (e.g. "inference/1@7"): when it closes (the peer exits or dies), the
  // server appends the name to the key "gone" (the last kGoneKept names, one per line), so
  // anyone can learn of a dead peer without waiting for a deadline.
  Status identify(const std::string& who);

 private:
  RendezvousClient() = default;
  Result<std::vector<uint8_t>> request(const std::vector<uint8_t>& frame,
                                       Clock::time_point deadline);
  int fd_ = -1;
  std::string where_;
};

}  // namespace weightcast::transport
