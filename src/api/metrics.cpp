// The Controller's metrics: Prometheus text from the peers' step records, and GET /metrics.
#include "metrics.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

namespace weightcast::api::detail {

namespace {

using nlohmann::json;

// One metric family: its samples, in the order they were added.
struct Family {
  const char* type;
  const char* help;
  std::string samples;
};

class Text {
 public:
  void add(const std::string& name, const char* type, const char* help, const std::string& labels,
           double v) {
    auto [it, fresh] = fams_.try_emplace(name, Family{type, help, {}});
    if (fresh) order_.push_back(name);
    if (labels.empty())
      it->second.samples += fmt::format("{} {:.9g}\n", name, v);
    else
      it->second.samples += fmt::format("{}{{{}}} {:.9g}\n", name, labels, v);
  }
  std::string str() const {
    std::string out;
    for (const std::string& n : order_) {
      const Family& f = fams_.at(n);
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}", n, f.help, n, f.type, f.samples);
    }
    return out;
  }

 private:
  std::map<std::string, Family> fams_;
  std::vector<std::string> order_;
};

// A label value as the text format quotes it.
std::string escaped(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '\\' || c == '"') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

// A record's number at `key` (absent or not a number: nothing).
std::optional<double> num(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

void peer_record(Text& t, const std::string& who, const json& j) {
  auto gauge = [&](const char* name, const char* help, const char* key) {
    if (auto v = num(j, key)) t.add(name, "gauge", help, who, *v);
  };
  gauge("weightcast_step", "The step of the peer's last record.", "step");
  gauge("weightcast_step_attempt", "The attempt of that step (1: the first).", "attempt");
  gauge("weightcast_incarnation", "The incarnation of the process that wrote the record.",
        "incarnation");
  if (auto ok = j.find("ok"); ok != j.end() && ok->is_boolean())
    t.add("weightcast_step_ok", "gauge", "1 when the last step succeeded, 0 when it failed.", who,
          ok->get<bool>() ? 1 : 0);
  gauge("weightcast_step_seconds", "The last step's time on this peer.", "seconds");
  gauge("weightcast_step_bytes", "Bytes the last step wrote (trainers) or received (inference).",
        "bytes");
  gauge("weightcast_step_writes", "Writes the last step posted (trainers).", "writes");
  gauge("weightcast_step_immediates", "Immediates the last step waited for (inference).",
        "immediates");
  gauge("weightcast_step_stale_arrivals",
        "Writes of older attempts dropped during the last step (inference).", "stale");
  gauge("weightcast_step_staged_bytes", "Bytes copied in from the staging area (inference).",
        "staged_bytes");
  gauge("weightcast_step_staging_peak_bytes",
        "Most staging memory the last step's writes read at once (trainers).",
        "staging_peak_bytes");
  gauge("weightcast_step_reconnected_receivers",
        "Receivers that had restarted, reconnected to in the last step (trainers).", "reconnected");
  if (auto st = j.find("stages"); st != j.end() && st->is_object())
    for (const auto& [stage, v] : st->items())
      if (v.is_number())
        t.add("weightcast_step_stage_seconds", "gauge",
              "Where the last step's time went on this peer (trainers; see PushStats).",
              fmt::format("{},stage=\"{}\"", who, escaped(stage)), v.get<double>());
  if (auto nb = j.find("nic_bytes"); nb != j.end() && nb->is_array())
    for (size_t n = 0; n < nb->size(); ++n)
      if ((*nb)[n].is_number())
        t.add("weightcast_step_nic_bytes", "gauge", "Bytes the last step posted on each NIC.",
              fmt::format("{},nic=\"{}\"", who, n), (*nb)[n].get<double>());
  if (auto tot = j.find("totals"); tot != j.end() && tot->is_object()) {
    if (auto v = num(*tot, "ok"))
      t.add("weightcast_steps_total", "counter", "Steps this peer's process recorded, by result.",
            who + ",result=\"ok\"", *v);
    if (auto v = num(*tot, "failed"))
      t.add("weightcast_steps_total", "counter", "Steps this peer's process recorded, by result.",
            who + ",result=\"failed\"", *v);
    if (auto v = num(*tot, "bytes"))
      t.add("weightcast_bytes_total", "counter", "Bytes over this process's successful steps.", who,
            *v);
    if (auto v = num(*tot, "seconds"))
      t.add("weightcast_step_seconds_total", "counter",
            "Seconds over this process's successful steps.", who, *v);
  }
}

}  // namespace

std::string prometheus_text(const std::vector<PeerState>& peers,
                            const transport::RendezvousServer::Stats& rdv) {
  Text t;
  std::map<std::string, double> planned;
  for (const PeerState& p : peers) planned[p.role] += 1;
  for (const auto& [role, n] : planned)
    t.add("weightcast_peers", "gauge", "Peers the plan has, by role.",
          fmt::format("role=\"{}\"", role), n);
  for (const PeerState& p : peers) {
    const std::string who = fmt::format("role=\"{}\",rank=\"{}\"", p.role, p.rank);
    t.add("weightcast_peer_up", "gauge",
          "1 while the peer's current process is connected; 0 before it joined or once it "
          "exited or died.",
          who, p.joined && !p.lost ? 1 : 0);
  }
  for (const PeerState& p : peers) {
    if (!p.record) continue;
    const std::string who = fmt::format("role=\"{}\",rank=\"{}\"", p.role, p.rank);
    const json j = json::parse(*p.record, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      t.add("weightcast_peer_record_malformed", "gauge",
            "1 for a peer whose last record is not a step record (skipped).", who, 1);
      continue;
    }
    peer_record(t, who, j);
  }
  t.add("weightcast_rendezvous_clients", "gauge", "Sessions connected to the rendezvous.", "",
        static_cast<double>(rdv.clients));
  t.add("weightcast_rendezvous_keys", "gauge", "Keys the rendezvous holds.", "",
        static_cast<double>(rdv.keys));
  t.add("weightcast_rendezvous_stored_bytes", "gauge", "Bytes the rendezvous holds.", "",
        static_cast<double>(rdv.stored_bytes));
  t.add("weightcast_rendezvous_requests_total", "counter", "Requests the rendezvous served.",
        "op=\"put\"", static_cast<double>(rdv.puts));
  t.add("weightcast_rendezvous_requests_total", "counter", "Requests the rendezvous served.",
        "op=\"get\"", static_cast<double>(rdv.gets));
  t.add("weightcast_rendezvous_rejected_total", "counter",
        "Connections refused (bad token, malformed frames, limits).", "",
        static_cast<double>(rdv.rejected));
  return t.str();
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& host, uint16_t port,
                                                            std::function<std::string()> body) {
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  auto fd = transport::listen_tcp(host, port, s->port_, "metrics endpoint");
  if (!fd) return fd.status();
  s->listen_fd_ = *fd;
  s->wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (s->wake_fd_ < 0)
    return Status(Code::kSystem,
                  fmt::format("metrics endpoint: eventfd: {}", std::strerror(errno)));
  s->body_ = std::move(body);
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

MetricsServer::~MetricsServer() {
  stop_ = true;
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void MetricsServer::loop() {
  while (!stop_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
    if (stop_ || (p[1].revents & POLLIN)) return;
    if (!(p[0].revents & POLLIN)) continue;
    const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EMFILE || errno == ENFILE) ::poll(nullptr, 0, 100);  // back off
      continue;
    }
    serve(c);
    ::close(c);
  }
}

void MetricsServer::serve(int fd) {
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  constexpr size_t kMax = 8192;
  std::string req;
  char buf[2048];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
    if (req.size() > kMax || std::chrono::steady_clock::now() > deadline) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    req.append(buf, static_cast<size_t>(n));
  }
  auto reply = [&](const char* status, const char* type, const std::string& text, bool head) {
    std::string out = fmt::format(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status, type, text.size());
    if (!head) out += text;
    for (size_t off = 0; off < out.size();) {
      const ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        return;
      }
      off += static_cast<size_t>(n);
    }
  };
  const size_t eol = req.find_first_of("\r\n");
  if (eol == std::string::npos || req.size() > kMax) {
    reply("400 Bad Request", "text/plain", "weightcast metrics: a bad or oversized request\n",
          false);
    return;
  }
  const std::string line = req.substr(0, eol);
  const size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos ||
      line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    reply("400 Bad Request", "text/plain", "weightcast metrics: not an HTTP request line\n", false);
    return;
  }
  const std::string method = line.substr(0, sp1), path = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    reply("405 Method Not Allowed", "text/plain", "weightcast metrics: GET /metrics\n", false);
    return;
  }
  if (path != "/metrics" && path.rfind("/metrics?", 0) != 0) {
    reply("404 Not Found", "text/plain", "weightcast metrics: GET /metrics\n", head);
    return;
  }
  reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", body_(), head);
}

}  // namespace weightcast::api::detail
