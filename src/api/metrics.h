// The Controller's metrics (internal to src/api): every peer's last step record rendered as
// Prometheus text, and the small HTTP server that answers GET /metrics with it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/transport/rendezvous.h"

namespace weightcast::api::detail {

// What the controller knows of one peer at a scrape.
struct PeerState {
  const char* role = "trainer";
  uint32_t rank = 0;
  bool joined = false;                // published an incarnation
  bool lost = false;                  // its current incarnation's session closed
  std::optional<std::string> record;  // its last step record (keys::metrics), as the peer put it
};

// Prometheus text exposition (version 0.0.4) of the job: one family per quantity, each peer a
// labelled sample ({role="trainer",rank="3"}). A record that is not the JSON object a peer
// writes counts under weightcast_peer_record_malformed and is otherwise skipped.
std::string prometheus_text(const std::vector<PeerState>& peers,
                            const transport::RendezvousServer::Stats& rdv);

// Answers HTTP GET /metrics with `body()` (text/plain; version=0.0.4), one connection at a time,
// on a thread of its own; anything else gets 404 / 405 / 400. A client gets 2 s to send its
// request; requests over 8 KiB are refused. Stops (and joins) when destroyed.
class MetricsServer {
 public:
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& host, uint16_t port,
                                                      std::function<std::string()> body);
  ~MetricsServer();
  uint16_t port() const { return port_; }

 private:
  MetricsServer() = default;
  void loop();
  void serve(int fd);
  int listen_fd_ = -1, wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::function<std::string()> body_;
  std::thread thread_;
};

}  // namespace weightcast::api::detail
