// The rendezvous: a small TCP key-value service through which peers exchange address blobs and
// memory descriptors. Length-prefixed frames, a job token every client must present first, size
// limits and idle timeouts; malformed or oversized frames are answered with an error and the
// connection closed, never a crash. Run it standalone (`weightcast rendezvous`) or embedded.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::transport {

struct RendezvousLimits {
  size_t max_key = 256;
  size_t max_value = 1 << 20;
  size_t max_clients = 256;
  // A connection must present the job token within this long. Authenticated peers are never
  // dropped for being idle: RL steps are minutes apart (TCP keepalive finds dead ones).
  std::chrono::milliseconds handshake_timeout{5000};
};

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
    uint64_t connections = 0, rejected = 0, puts = 0, gets = 0;
  };
  Stats stats() const;

 private:
  RendezvousServer() = default;
  void accept_loop();
  void serve(int fd);

  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::string token_;
  RendezvousLimits limits_;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Entry {
    std::vector<uint8_t> value;
    uint64_t version = 0;
  };
  std::map<std::string, Entry> kv_;
  uint64_t version_ = 0;  // the last version given to a put
  std::set<int> clients_;
  std::vector<std::thread> workers_;
  Stats stats_;
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
  // Waits until the key exists (or the deadline passes: kTimeout naming the key).
  Result<std::vector<uint8_t>> get(const std::string& key, Clock::time_point deadline);
  // Every put gets a version from one server-wide counter that only grows. Waits until `key`
  // holds a value put after version `after` (0: any), and returns it with its version.
  struct Versioned {
    std::vector<uint8_t> value;
    uint64_t version = 0;
  };
  Result<Versioned> get_newer(const std::string& key, uint64_t after, Clock::time_point deadline);
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
