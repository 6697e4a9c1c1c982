// Rendezvous wire format: every frame is a 4-byte big-endian length then the payload; a payload
// is an op byte then fields, each a 4-byte big-endian length and bytes.
//   'H' token            -> 'O' | 'E' message      (must be the first frame)
//   'P' key value        -> 'O' | 'E' message
//   'G' key wait_ms(4B)  -> 'V' value | 'N'
//   'W' key after(8B) wait_ms(4B) -> 'V' value version(8B) | 'N'   (a value put after `after`)
//   'I' name             -> 'O'    (names the session: its close is recorded under "gone")
// A put is answered 'O' version(8B). Until the token is presented the connection has
// limits.handshake_timeout; after it, none (peers idle for minutes between steps stay connected).
#include "weightcast/transport/rendezvous.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace weightcast::transport {

namespace {

constexpr size_t kFrameOverhead = 64;

void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 3; i >= 0; --i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void put64(std::vector<uint8_t>& b, uint64_t v) {
  put32(b, static_cast<uint32_t>(v >> 32));
  put32(b, static_cast<uint32_t>(v));
}
uint64_t get64(const uint8_t* p) { return (uint64_t{get32(p)} << 32) | get32(p + 4); }
void put_field(std::vector<uint8_t>& b, std::span<const uint8_t> f) {
  put32(b, static_cast<uint32_t>(f.size()));
  b.insert(b.end(), f.begin(), f.end());
}
std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Reads exactly n bytes before the deadline; false on EOF, error or timeout.
bool read_full(int fd, uint8_t* p, size_t n, std::chrono::steady_clock::time_point deadline) {
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int pr = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (pr < 0 && errno != EINTR) return false;
    if (pr <= 0) continue;
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r == 0) return false;
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool write_full(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool send_frame(int fd, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> f;
  put32(f, static_cast<uint32_t>(payload.size()));
  f.insert(f.end(), payload.begin(), payload.end());
  return write_full(fd, f.data(), f.size());
}

std::vector<uint8_t> reply(char op, std::span<const uint8_t> field = {}) {
  std::vector<uint8_t> b{static_cast<uint8_t>(op)};
  if (op != 'N') put_field(b, field);
  return b;
}

// Splits a payload's fields; false when they do not tile the payload exactly.
bool fields(const std::vector<uint8_t>& p, size_t want,
            std::vector<std::span<const uint8_t>>& out) {
  size_t pos = 1;
  while (pos < p.size() && out.size() < want) {
    if (pos + 4 > p.size()) return false;
    const uint32_t n = get32(&p[pos]);
    pos += 4;
    if (n > p.size() - pos) return false;
    out.emplace_back(p.data() + pos, n);
    pos += n;
  }
  return pos == p.size() && out.size() == want;
}

}  // namespace

Result<std::unique_ptr<RendezvousServer>> RendezvousServer::start(const std::string& host,
                                                                  uint16_t port, std::string token,
                                                                  RendezvousLimits limits) {
  if (token.empty()) return invalid("rendezvous: a job token is required");
  std::unique_ptr<RendezvousServer> s(new RendezvousServer());
  s->token_ = std::move(token);
  s->limits_ = limits;
  s->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->listen_fd_ < 0)
    return Status(Code::kSystem, fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  setsockopt(s->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return invalid("rendezvous: bad bind address '{}'", host);
  if (::bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return Status(Code::kSystem, fmt::format("bind({}:{}): {}", host, port, std::strerror(errno)));
  if (::listen(s->listen_fd_, 128) != 0)
    return Status(Code::kSystem, fmt::format("listen: {}", std::strerror(errno)));
  socklen_t len = sizeof a;
  getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  s->port_ = ntohs(a.sin_port);
  s->acceptor_ = std::thread([p = s.get()] { p->accept_loop(); });
  return s;
}

RendezvousServer::~RendezvousServer() {
  stop_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  ::close(listen_fd_);
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (int fd : clients_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

RendezvousServer::Stats RendezvousServer::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void RendezvousServer::accept_loop() {
  while (!stop_) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 200) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> lk(mu_);
    if (clients_.size() >= limits_.max_clients) {
      ++stats_.rejected;
      ::close(fd);
      continue;
    }
    ++stats_.connections;
    clients_.insert(fd);
    workers_.emplace_back([this, fd] { serve(fd); });
  }
}

void RendezvousServer::serve(int fd) {
  bool authed = false;
  std::string name;  // what the session said it is ('I'), recorded under "gone" when it closes
  const size_t max_frame = limits_.max_key + limits_.max_value + kFrameOverhead;
  while (!stop_) {
    uint8_t hdr[4];
    // Before the token: a short deadline. After it: none; a dead peer's socket is found by TCP
    // keepalive (or by the server's shutdown).
    const auto deadline = authed ? std::chrono::steady_clock::time_point::max()
                                 : std::chrono::steady_clock::now() + limits_.handshake_timeout;
    if (!read_full(fd, hdr, 4, deadline)) break;
    const uint32_t n = get32(hdr);
    if (n == 0 || n > max_frame) {
      send_frame(
          fd,
          reply('E', bytes(fmt::format("frame of {} bytes rejected (limit {})", n, max_frame))));
      std::lock_guard<std::mutex> lk(mu_);
      ++stats_.rejected;
      break;
    }
    std::vector<uint8_t> p(n);
    if (!read_full(fd, p.data(), n, deadline)) break;
    std::vector<std::span<const uint8_t>> f;
    const char op = static_cast<char>(p[0]);
    auto reject = [&](const std::string& why) {
      send_frame(fd, reply('E', bytes(why)));
      std::lock_guard<std::mutex> lk(mu_);
      ++stats_.rejected;
    };
    if (!authed) {
      if (op != 'H' || !fields(p, 1, f) || std::string(f[0].begin(), f[0].end()) != token_) {
        reject("job token missing or wrong");
        break;
      }
      authed = true;
      int one = 1, idle = 60, intvl = 10, cnt = 6;
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
      send_frame(fd, reply('O'));
      continue;
    }
    if (op == 'P' && fields(p, 2, f)) {
      if (f[0].size() > limits_.max_key || f[1].size() > limits_.max_value) {
        reject("key or value too large");
        break;
      }
      std::vector<uint8_t> ver;
      {
        std::lock_guard<std::mutex> lk(mu_);
        kv_[std::string(f[0].begin(), f[0].end())] =
            Entry{std::vector<uint8_t>(f[1].begin(), f[1].end()), ++version_};
        ++stats_.puts;
        put64(ver, version_);
      }
      cv_.notify_all();
      send_frame(fd, reply('O', ver));
    } else if ((op == 'G' && fields(p, 2, f) && f[1].size() == 4) ||
               (op == 'W' && fields(p, 3, f) && f[1].size() == 8 && f[2].size() == 4)) {
      const std::string key(f[0].begin(), f[0].end());
      const uint64_t after = op == 'W' ? get64(f[1].data()) : 0;
      const auto until =
          std::chrono::steady_clock::now() +
          std::chrono::milliseconds(std::min<uint32_t>(get32(f.back().data()), 60000));
      std::vector<uint8_t> value;
      bool found;
      {
        std::unique_lock<std::mutex> lk(mu_);
        ++stats_.gets;
        auto there = [&] {
          auto it = kv_.find(key);
          return it != kv_.end() && it->second.version > after;
        };
        found = cv_.wait_until(lk, until, [&] { return stop_ || there(); }) && there();
        if (found) {
          const Entry& e = kv_[key];
          value = e.value;
          if (op == 'W') put64(value, e.version);  // the version rides after the value
        }
      }
      if (!send_frame(fd, found ? reply('V', value) : reply('N'))) break;
    } else if (op == 'I' && fields(p, 1, f) && f[0].size() <= limits_.max_key) {
      name.assign(f[0].begin(), f[0].end());
      if (!send_frame(fd, reply('O'))) break;
    } else {
      reject(
          fmt::format("malformed request (op 0x{:02x}, {} bytes)", static_cast<unsigned>(p[0]), n));
      break;
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  clients_.erase(fd);
  ::close(fd);
  if (!name.empty() && !stop_) {
    Entry& e = kv_["gone"];
    std::string list(e.value.begin(), e.value.end());
    list += name + "\n";
    for (size_t lines = std::count(list.begin(), list.end(), '\n'); lines > kGoneKept; --lines)
      list.erase(0, list.find('\n') + 1);
    e.value.assign(list.begin(), list.end());
    e.version = ++version_;
    cv_.notify_all();
  }
}

Result<std::unique_ptr<RendezvousClient>> RendezvousClient::connect(const std::string& host,
                                                                    uint16_t port,
                                                                    const std::string& token,
                                                                    Clock::time_point deadline) {
  std::unique_ptr<RendezvousClient> c(new RendezvousClient());
  c->where_ = fmt::format("{}:{}", host, port);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return invalid("rendezvous: bad address '{}'", host);
  // The server may not be up yet: retry until the deadline.
  while (true) {
    c->fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(c->fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) break;
    const int err = errno;
    ::close(c->fd_);
    c->fd_ = -1;
    if (Clock::now() > deadline)
      return Status(Code::kTimeout,
                    fmt::format("rendezvous {}: connect: {}", c->where_, std::strerror(err)));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int one = 1;
  setsockopt(c->fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<uint8_t> hello{'H'};
  put_field(hello, bytes(token));
  auto r = c->request(hello, deadline);
  if (!r) return r.status();
  return c;
}

RendezvousClient::~RendezvousClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::vector<uint8_t>> RendezvousClient::request(const std::vector<uint8_t>& frame,
                                                       Clock::time_point deadline) {
  if (!send_frame(fd_, frame))
    return Status(Code::kSystem,
                  fmt::format("rendezvous {}: send: {}", where_, std::strerror(errno)));
  uint8_t hdr[4];
  if (!read_full(fd_, hdr, 4, deadline + std::chrono::seconds(1)))
    return Status(Code::kTimeout, fmt::format("rendezvous {}: no reply", where_));
  const uint32_t n = get32(hdr);
  if (n == 0 || n > (64u << 20))
    return Status(Code::kRemote, fmt::format("rendezvous {}: bad reply length {}", where_, n));
  std::vector<uint8_t> p(n);
  if (!read_full(fd_, p.data(), n, deadline + std::chrono::seconds(1)))
    return Status(Code::kTimeout, fmt::format("rendezvous {}: truncated reply", where_));
  std::vector<std::span<const uint8_t>> f;
  if (p[0] == 'E' && fields(p, 1, f))
    return Status(Code::kRemote,
                  fmt::format("rendezvous {}: {}", where_, std::string(f[0].begin(), f[0].end())));
  return p;
}

Result<uint64_t> RendezvousClient::put_versioned(const std::string& key,
                                                 std::span<const uint8_t> value) {
  std::vector<uint8_t> m{'P'};
  put_field(m, bytes(key));
  put_field(m, value);
  auto r = request(m, Clock::now() + std::chrono::seconds(10));
  if (!r) return r.status();
  std::vector<std::span<const uint8_t>> f;
  if ((*r)[0] != 'O' || !fields(*r, 1, f) || f[0].size() != 8)
    return Status(Code::kRemote,
                  fmt::format("rendezvous {}: unexpected reply to put '{}'", where_, key));
  return get64(f[0].data());
}

Status RendezvousClient::identify(const std::string& who) {
  std::vector<uint8_t> m{'I'};
  put_field(m, bytes(who));
  auto r = request(m, Clock::now() + std::chrono::seconds(10));
  return r ? Status::ok() : r.status();
}

Status RendezvousClient::put(const std::string& key, std::span<const uint8_t> value) {
  auto v = put_versioned(key, value);
  return v ? Status::ok() : v.status();
}

Result<RendezvousClient::Versioned> RendezvousClient::get_newer(const std::string& key,
                                                                uint64_t after,
                                                                Clock::time_point deadline) {
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    std::vector<uint8_t> m{'W'};
    put_field(m, bytes(key));
    std::vector<uint8_t> a, w;
    put64(a, after);
    put_field(m, a);
    put32(w, static_cast<uint32_t>(std::clamp<int64_t>(left, 0, 30000)));
    put_field(m, w);
    auto r = request(m, deadline);
    if (!r) return r.status();
    std::vector<std::span<const uint8_t>> f;
    if ((*r)[0] == 'V' && fields(*r, 1, f) && f[0].size() >= 8) {
      Versioned v;
      v.value.assign(f[0].begin(), f[0].end() - 8);
      v.version = get64(f[0].data() + f[0].size() - 8);
      return v;
    }
    if (Clock::now() >= deadline)
      return Status(Code::kTimeout,
                    after == 0 ? fmt::format("rendezvous {}: key '{}' not published before the "
                                             "deadline",
                                             where_, key)
                               : fmt::format("rendezvous {}: no value of '{}' newer than version "
                                             "{} before the deadline",
                                             where_, key, after));
  }
}

Status RendezvousClient::put(const std::string& key, const std::string& value) {
  return put(key, bytes(value));
}

Result<std::vector<uint8_t>> RendezvousClient::get(const std::string& key,
                                                   Clock::time_point deadline) {
  auto v = get_newer(key, 0, deadline);  // any value is newer than version 0
  if (!v) return v.status();
  return std::move(v->value);
}

}  // namespace weightcast::transport
