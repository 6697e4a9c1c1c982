// The rendezvous server's event loop (the protocol and its state: rendezvous_core.h), the
// client, and peer tokens.
#include "weightcast/transport/rendezvous.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "rendezvous_core.h"

namespace weightcast::transport {

using rdv::bytes;
using rdv::fields;
using rdv::get32;
using rdv::get64;
using rdv::put32;
using rdv::put64;
using rdv::put_field;

namespace {

constexpr const char* kPeerPrefix = "wcp1:";
constexpr const char* kFull = "rendezvous full";

std::string hmac_hex(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &n);
  std::string hex;
  for (unsigned i = 0; i < n; ++i) hex += fmt::format("{:02x}", out[i]);
  return hex;
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

bool send_frame(int fd, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> f;
  put32(f, static_cast<uint32_t>(payload.size()));
  f.insert(f.end(), payload.begin(), payload.end());
  const uint8_t* p = f.data();
  size_t n = f.size();
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

void tune(int fd) {
  int one = 1, idle = 60, intvl = 10, cnt = 6;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

constexpr uint64_t kListenId = 0, kWakeId = 1;

}  // namespace

namespace rdv {
bool constant_time_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}
std::optional<std::string> peer_identity(const std::string& job_token, const std::string& token) {
  if (token.rfind(kPeerPrefix, 0) != 0) return std::nullopt;
  const size_t colon = token.rfind(':');
  const std::string who = token.substr(5, colon - 5);
  if (colon <= 5 || who.empty()) return std::nullopt;
  if (!constant_time_equal(token.substr(colon + 1), hmac_hex(job_token, "weightcast peer " + who)))
    return std::nullopt;
  return who;
}
}  // namespace rdv

std::string peer_token(const std::string& job_token, const std::string& identity) {
  return kPeerPrefix + identity + ":" + hmac_hex(job_token, "weightcast peer " + identity);
}

Result<int> listen_tcp(const std::string& host, uint16_t port, uint16_t& bound, const char* who) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return invalid("{}: bad bind address '{}' (an IPv4 address such as 127.0.0.1)", who, host);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return Status(Code::kSystem, fmt::format("{}: socket: {}", who, std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    Status st(Code::kSystem,
              fmt::format("{}: listening on {}:{}: {}", who, host, port, std::strerror(errno)));
    ::close(fd);
    return st;
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  bound = ntohs(a.sin_port);
  return fd;
}

Result<std::unique_ptr<RendezvousServer>> RendezvousServer::start(const std::string& host,
                                                                  uint16_t port, std::string token,
                                                                  RendezvousLimits limits) {
  if (token.empty()) return invalid("rendezvous: a job token is required");
  if (token.find(':') != std::string::npos && token.rfind(kPeerPrefix, 0) == 0)
    return invalid("rendezvous: the server needs the job token, not a peer token");
  std::unique_ptr<RendezvousServer> s(new RendezvousServer());
  auto fd = listen_tcp(host, port, s->port_, "rendezvous");
  if (!fd) return fd.status();
  s->listen_fd_ = *fd;
  s->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  s->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->epoll_fd_ < 0 || s->wake_fd_ < 0)
    return Status(Code::kSystem, fmt::format("epoll/eventfd: {}", std::strerror(errno)));
  epoll_event l{EPOLLIN, {.u64 = kListenId}}, w{EPOLLIN, {.u64 = kWakeId}};
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->listen_fd_, &l);
  epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, s->wake_fd_, &w);
  // Every client is a file descriptor: let the process have as many as the limits allow.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < limits.max_clients + 256) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, limits.max_clients + 256);
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  s->core_ = std::make_unique<rdv::Core>(std::move(token), limits);
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

RendezvousServer::~RendezvousServer() {
  stop_ = true;
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, epoll_fd_, wake_fd_})
    if (fd >= 0) ::close(fd);
}

RendezvousServer::Stats RendezvousServer::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  Stats s = core_->stats();
  s.accept_errors = accept_errors_;
  return s;
}

// One thread, every socket non-blocking. The core says how much each connection may deliver
// (reading stops while a wait is parked or the input budget is spent) and what to send back.
void RendezvousServer::loop() {
  using Clock = std::chrono::steady_clock;
  std::unordered_map<uint64_t, int> fds;
  std::unordered_map<uint64_t, uint32_t> armed;  // the events each socket is registered for
  uint64_t next_id = 2;
  bool listening = true;
  Clock::time_point next_timer = Clock::time_point::max(), resume_accept{};
  std::vector<epoll_event> evs(512);
  std::vector<uint8_t> buf(64 << 10);
  rdv::Core& core = *core_;
  auto drop = [&](uint64_t id) {
    auto it = fds.find(id);
    if (it == fds.end()) return;
    core.close(id);
    // Drain what the peer sent before closing, so the kernel does not answer it with a reset
    // that could discard our last error frame.
    while (::recv(it->second, buf.data(), buf.size(), MSG_DONTWAIT) > 0) {
    }
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second, nullptr);
    ::close(it->second);
    fds.erase(it);
    armed.erase(id);
  };
  auto service = [&](uint64_t id, Clock::time_point now) {
    auto it = fds.find(id);
    if (it == fds.end()) return;
    const int fd = it->second;
    for (const auto* out = core.output(id); out && !out->empty(); out = core.output(id)) {
      const auto& [chunk, off] = out->front();
      const ssize_t r =
          ::send(fd, chunk->data() + off, chunk->size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (r <= 0) return drop(id);
      core.sent(id, static_cast<size_t>(r), now);
    }
    const auto* out = core.output(id);
    const bool pending = out && !out->empty();
    if (core.closing(id) && !pending) return drop(id);
    const uint32_t want = EPOLLRDHUP | (core.room(id) ? EPOLLIN : 0u) | (pending ? EPOLLOUT : 0u);
    if (armed[id] != want) {
      epoll_event e{want, {.u64 = id}};
      epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &e);
      armed[id] = want;
    }
  };
  auto accept_all = [&](Clock::time_point now) {
    while (true) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO || errno == EPERM) continue;
        // Out of descriptors or memory: stop accepting for a moment instead of spinning.
        ++accept_errors_;
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        listening = false;
        resume_accept = now + std::chrono::milliseconds(100);
        return;
      }
      tune(fd);
      const uint64_t id = next_id++;
      epoll_event e{EPOLLIN | EPOLLRDHUP, {.u64 = id}};
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &e) != 0) {
        ++accept_errors_;
        ::close(fd);
        continue;
      }
      fds[id] = fd;
      armed[id] = e.events;
      core.open(id, now);
    }
  };
  while (!stop_) {
    auto now = Clock::now();
    auto until = std::min(next_timer, listening ? Clock::time_point::max() : resume_accept);
    const int timeout =
        until <= now ? 0
        : until - now > std::chrono::seconds(1)
            ? 1000
            : static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(until - now).count());
    const int n = ::epoll_wait(epoll_fd_, evs.data(), static_cast<int>(evs.size()), timeout);
    std::lock_guard<std::mutex> lk(mu_);
    now = Clock::now();
    if (!listening && now >= resume_accept) {
      epoll_event l{EPOLLIN, {.u64 = kListenId}};
      listening = epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &l) == 0;
      if (!listening) resume_accept = now + std::chrono::milliseconds(100);
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t id = evs[i].data.u64;
      if (id == kWakeId) continue;
      if (id == kListenId) {
        accept_all(now);
        continue;
      }
      auto it = fds.find(id);
      if (it == fds.end()) continue;
      if (evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        drop(id);  // our clients never half-close: the peer is gone
        continue;
      }
      if (evs[i].events & EPOLLIN) {
        for (size_t room = core.room(id); room > 0 && fds.count(id); room = core.room(id)) {
          const ssize_t r = ::recv(it->second, buf.data(), std::min(room, buf.size()), 0);
          if (r < 0 && errno == EINTR) continue;
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          if (r <= 0) {
            drop(id);
            break;
          }
          core.input(id, {buf.data(), static_cast<size_t>(r)}, now);
        }
      }
      if (fds.count(id) && (evs[i].events & EPOLLOUT)) service(id, now);
    }
    next_timer = core.tick(now);
    for (auto dirty = core.take_dirty(); !dirty.empty(); dirty = core.take_dirty())
      for (uint64_t id : dirty) service(id, now);
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [id, fd] : fds) ::close(fd);
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
  tune(c->fd_);
  std::vector<uint8_t> hello{'H'};
  put_field(hello, bytes(token));
  auto r = c->request(hello, deadline);
  // A full server (max_clients) may have room again soon: ask again until the deadline.
  if (!r && r.status().message().find(kFull) != std::string::npos && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return connect(host, port, token, deadline);
  }
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

Status RendezvousClient::del(const std::string& key) {
  std::vector<uint8_t> m{'D'};
  put_field(m, bytes(key));
  auto r = request(m, Clock::now() + std::chrono::seconds(10));
  return r ? Status::ok() : r.status();
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

Result<std::vector<std::optional<RendezvousClient::Versioned>>> RendezvousClient::newer_now(
    const std::vector<std::string>& keys, const std::vector<uint64_t>& afters,
    Clock::time_point deadline) {
  if (keys.size() != afters.size() || keys.size() > rdv::Core::kManyKeys)
    return Status(Code::kInvalidArgument,
                  fmt::format("rendezvous {}: newer_now of {} keys with {} versions (at most {})",
                              where_, keys.size(), afters.size(), rdv::Core::kManyKeys));
  std::vector<uint8_t> ks, as, m{'M'};
  for (size_t i = 0; i < keys.size(); ++i) {
    put32(ks, static_cast<uint32_t>(keys[i].size()));
    ks.insert(ks.end(), keys[i].begin(), keys[i].end());
    put64(as, afters[i]);
  }
  put_field(m, ks);
  put_field(m, as);
  auto r = request(m, deadline);
  if (!r) return r.status();
  std::vector<std::span<const uint8_t>> f;
  if ((*r)[0] == 'E' && fields(*r, 1, f))
    return Status(Code::kRemote,
                  fmt::format("rendezvous {}: {}", where_, std::string(f[0].begin(), f[0].end())));
  const auto bad = [&] {
    return Status(Code::kRemote, fmt::format("rendezvous {}: malformed many-key answer", where_));
  };
  if ((*r)[0] != 'V' || !fields(*r, 1, f)) return bad();
  std::vector<std::optional<Versioned>> out;
  const std::span<const uint8_t> a = f[0];
  size_t pos = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (pos >= a.size()) return bad();
    if (a[pos++] == 0) {
      out.emplace_back();
      continue;
    }
    if (a.size() - pos < 12) return bad();
    Versioned v;
    v.version = get64(&a[pos]);
    const uint32_t n = get32(&a[pos + 8]);
    pos += 12;
    if (n > a.size() - pos) return bad();
    v.value.assign(a.begin() + static_cast<long>(pos), a.begin() + static_cast<long>(pos + n));
    pos += n;
    out.push_back(std::move(v));
  }
  if (pos != a.size()) return bad();
  return out;
}

Result<std::vector<uint8_t>> RendezvousClient::get(const std::string& key,
                                                   Clock::time_point deadline) {
  auto v = get_newer(key, 0, deadline);  // any value is newer than version 0
  if (!v) return v.status();
  return std::move(v->value);
}

}  // namespace weightcast::transport
