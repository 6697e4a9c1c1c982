#include "rendezvous_core.h"

#include <fmt/format.h>

#include <algorithm>

namespace weightcast::transport::rdv {

void put32(Bytes& b, uint32_t v) {
  for (int i = 3; i >= 0; --i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void put64(Bytes& b, uint64_t v) {
  put32(b, static_cast<uint32_t>(v >> 32));
  put32(b, static_cast<uint32_t>(v));
}
uint64_t get64(const uint8_t* p) { return (uint64_t{get32(p)} << 32) | get32(p + 4); }
void put_field(Bytes& b, std::span<const uint8_t> f) {
  put32(b, static_cast<uint32_t>(f.size()));
  b.insert(b.end(), f.begin(), f.end());
}
std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
bool fields(std::span<const uint8_t> p, size_t want, std::vector<std::span<const uint8_t>>& out) {
  size_t pos = 1;
  while (pos < p.size() && out.size() < want) {
    if (p.size() - pos < 4) return false;
    const uint32_t n = get32(&p[pos]);
    pos += 4;
    if (n > p.size() - pos) return false;
    out.emplace_back(p.data() + pos, n);
    pos += n;
  }
  return pos == p.size() && out.size() == want;
}

namespace {
constexpr size_t kFrameOverhead = 64;
constexpr size_t kEntryOverhead = 64;  // what a stored key costs beyond its bytes
std::string str(std::span<const uint8_t> s) { return std::string(s.begin(), s.end()); }
}  // namespace

Core::Core(std::string token, RendezvousLimits limits)
    : token_(std::move(token)),
      limits_(limits),
      max_frame_(limits.max_key + limits.max_value + kFrameOverhead) {}

Core::Conn* Core::find(Id id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : &it->second;
}

void Core::open(Id id, Clock::time_point now) {
  Conn& c = conns_[id];
  dirty_.insert(id);
  if (conns_.size() > limits_.max_clients) {
    ++stats_.rejected;
    fail(id, c,
         fmt::format("rendezvous full: {} connections (RendezvousLimits.max_clients)",
                     limits_.max_clients));
    return;
  }
  ++stats_.connections;
  c.hello_by = now + limits_.handshake_timeout;
  timers_.insert({c.hello_by, id});
  unauthenticated_.insert(id);
  if (unauthenticated_.size() > limits_.max_unauthenticated) {
    const Id oldest = *unauthenticated_.begin();
    ++stats_.evicted;
    fail(oldest, conns_.at(oldest),
         "evicted: too many connections without a token (the oldest handshakes go first)");
  }
}

size_t Core::room(Id id) const {
  auto it = conns_.find(id);
  if (it == conns_.end()) return 0;
  const Conn& c = it->second;
  if (c.closing || c.out_bytes > kFrameOverhead * 16) return 0;  // flush replies first
  if (c.in.size() < 4) return 4 - c.in.size();
  const size_t n = get32(c.in.data());
  if (n == 0 || n > max_frame_) return 0;  // process() rejects it
  if (c.reserved < n) return 0;            // waiting for input budget
  return 4 + n - c.in.size();              // the rest of this frame, no more
}

void Core::input(Id id, std::span<const uint8_t> data, Clock::time_point now) {
  Conn* c = find(id);
  if (!c || c->closing) return;
  data = data.first(std::min(data.size(), room(id)));
  c->in.insert(c->in.end(), data.begin(), data.end());
  process(id, *c, now);
}

void Core::process(Id id, Conn& c, Clock::time_point now) {
  dirty_.insert(id);
  while (!c.closing && !c.parked && c.in.size() >= 4) {
    const size_t n = get32(c.in.data());
    if (n == 0 || n > max_frame_) {
      ++stats_.rejected;
      fail(id, c, fmt::format("frame of {} bytes rejected (limit {})", n, max_frame_));
      return;
    }
    if (c.reserved < n) {  // the body needs room in the server-wide input budget
      if (buffered_ + n > limits_.max_buffered_bytes) {
        starved_.insert(id);
        return;
      }
      starved_.erase(id);
      buffered_ += n;
      c.reserved = n;
    }
    if (c.in.size() < 4 + n) return;
    const Bytes frame(c.in.begin() + 4, c.in.begin() + 4 + static_cast<std::ptrdiff_t>(n));
    c.in.clear();  // room() never lets more than one frame in
    release(c);
    handle(id, c, frame, now);
  }
}

void Core::release(Conn& c) {
  buffered_ -= c.reserved;
  c.reserved = 0;
  for (Id s : starved_) dirty_.insert(s);  // their turn may have come
}

void Core::send(Id id, Conn& c, char op, std::span<const uint8_t> field, Shared tail,
                std::span<const uint8_t> after) {
  const size_t tail_n = tail ? tail->size() : 0;
  auto head = std::make_shared<Bytes>();
  const bool has_field = op != 'N';
  put32(*head,
        static_cast<uint32_t>(1 + (has_field ? 4 + field.size() + tail_n + after.size() : 0)));
  head->push_back(static_cast<uint8_t>(op));
  if (has_field) {
    put32(*head, static_cast<uint32_t>(field.size() + tail_n + after.size()));
    head->insert(head->end(), field.begin(), field.end());
  }
  c.out_bytes += head->size();
  c.out.emplace_back(std::move(head), 0);
  if (tail_n) {  // a stored value is shared with the store, not copied
    c.out_bytes += tail_n;
    c.out.emplace_back(std::move(tail), 0);
  }
  if (!after.empty()) {
    c.out_bytes += after.size();
    c.out.emplace_back(std::make_shared<Bytes>(after.begin(), after.end()), 0);
  }
  dirty_.insert(id);
}

void Core::fail(Id id, Conn& c, const std::string& why) {
  if (c.closing) return;
  send(id, c, 'E', bytes(why));
  c.closing = true;
  unpark(id, c);
  release(c);
  timers_.erase({c.hello_by, id});
  unauthenticated_.erase(id);
}

void Core::handle(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point now) {
  const char op = static_cast<char>(p[0]);
  if (c.auth == Auth::kNone) return hello(id, c, p, now);
  std::vector<std::span<const uint8_t>> f;
  if (op == 'P' && fields(p, 2, f)) {
    const std::string key = str(f[0]);
    if (f[1].size() > limits_.max_value)
      return send(id, c, 'E',
                  bytes(fmt::format("value of '{}' is {} bytes (RendezvousLimits.max_value {})",
                                    key.substr(0, 64), f[1].size(), limits_.max_value)));
    if (std::string why = may_write(c, key); !why.empty()) return send(id, c, 'E', bytes(why));
    auto it = kv_.find(key);
    const size_t old = it == kv_.end() ? 0 : key.size() + it->second.value->size() + kEntryOverhead;
    const size_t add = key.size() + f[1].size() + kEntryOverhead;
    if (stored_ - old + add > limits_.max_store_bytes ||
        (it == kv_.end() && kv_.size() >= limits_.max_keys)) {
      ++stats_.denied;
      return send(id, c, 'E',
                  bytes(fmt::format("rendezvous store full: {} keys, {} bytes (limits {} keys, "
                                    "{} bytes); '{}' not stored",
                                    kv_.size(), stored_, limits_.max_keys, limits_.max_store_bytes,
                                    key.substr(0, 64))));
    }
    store(key, Bytes(f[1].begin(), f[1].end()));
    ++stats_.puts;
    Bytes ver;
    put64(ver, version_);
    return send(id, c, 'O', ver);
  }
  if (op == 'D' && fields(p, 1, f)) {
    const std::string key = str(f[0]);
    if (std::string why = may_write(c, key); !why.empty()) return send(id, c, 'E', bytes(why));
    erase(key);
    ++stats_.deletes;
    return send(id, c, 'O');
  }
  if (op == 'I' && fields(p, 1, f) && f[0].size() <= limits_.max_key) {
    const std::string name = str(f[0]);
    if (c.auth == Auth::kPeer && name != c.identity && name.rfind(c.identity + "@", 0) != 0)
      return send(id, c, 'E',
                  bytes(fmt::format("peer {} may not name its session '{}'", c.identity, name)));
    c.name = name;
    return send(id, c, 'O');
  }
  if (op == 'G' || op == 'W') return get(id, c, p, now);
  if (op == 'M') return many(id, c, p);
  ++stats_.rejected;
  fail(id, c,
       fmt::format("malformed request (op 0x{:02x}, {} bytes)", static_cast<unsigned>(p[0]),
                   p.size()));
}

void Core::hello(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point) {
  std::vector<std::span<const uint8_t>> f;
  if (static_cast<char>(p[0]) == 'H' && fields(p, 1, f)) {
    const std::string tok = str(f[0]);
    if (constant_time_equal(tok, token_)) {
      c.auth = Auth::kJob;
    } else if (auto who = peer_identity(token_, tok)) {
      c.auth = Auth::kPeer;
      c.identity = *who;
    }
  }
  if (c.auth == Auth::kNone) {
    ++stats_.rejected;
    return fail(id, c, "job token missing or wrong");
  }
  timers_.erase({c.hello_by, id});
  unauthenticated_.erase(id);
  send(id, c, 'O');
}

std::string Core::may_write(const Conn& c, const std::string& key) const {
  if (key.empty() || key.size() > limits_.max_key)
    return fmt::format("key of {} bytes (RendezvousLimits.max_key {})", key.size(),
                       limits_.max_key);
  if (key == "gone") return "'gone' is the server's own key: no client may write it";
  if (c.auth == Auth::kJob || key.rfind(c.identity + "/", 0) == 0) return {};
  return fmt::format("peer {} may write only keys under '{}/', not '{}'", c.identity, c.identity,
                     key.substr(0, 64));
}

void Core::store(const std::string& key, Bytes value) {
  auto [it, fresh] = kv_.try_emplace(key);
  if (!fresh) stored_ -= key.size() + it->second.value->size() + kEntryOverhead;
  stored_ += key.size() + value.size() + kEntryOverhead;
  it->second = Entry{std::make_shared<const Bytes>(std::move(value)), ++version_};
  auto [b, e] = waiters_.equal_range(key);
  std::vector<Id> ready;
  for (auto w = b; w != e; ++w) ready.push_back(w->second);
  for (Id w : ready)
    if (Conn* wc = find(w)) answer(w, *wc);
}

void Core::erase(const std::string& key) {
  auto it = kv_.find(key);
  if (it == kv_.end()) return;
  stored_ -= key.size() + it->second.value->size() + kEntryOverhead;
  kv_.erase(it);
}

void Core::get(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point now) {
  std::vector<std::span<const uint8_t>> f;
  const bool w = static_cast<char>(p[0]) == 'W';
  if (!(w ? fields(p, 3, f) && f[1].size() == 8 && f[2].size() == 4
          : fields(p, 2, f) && f[1].size() == 4) ||
      f[0].size() > limits_.max_key) {
    ++stats_.rejected;
    return fail(id, c,
                fmt::format("malformed {} request ({} bytes)", w ? "wait" : "get", p.size()));
  }
  ++stats_.gets;
  c.parked = true;
  c.versioned = w;
  c.key = str(f[0]);
  c.after = w ? get64(f[1].data()) : 0;
  c.until = now + std::min(std::chrono::milliseconds(get32(f.back().data())), limits_.max_wait);
  answer(id, c);
  if (c.parked) {
    waiters_.emplace(c.key, id);
    timers_.insert({c.until, id});
  }
}

void Core::many(Id id, Conn& c, std::span<const uint8_t> p) {
  std::vector<std::span<const uint8_t>> f;
  std::vector<std::string> keys;
  bool ok = fields(p, 2, f) && f[1].size() % 8 == 0 && f[1].size() / 8 <= kManyKeys;
  for (size_t pos = 0; ok && pos < f[0].size();) {
    const uint32_t n = f[0].size() - pos >= 4 ? get32(&f[0][pos]) : UINT32_MAX;
    ok = n <= limits_.max_key && n <= f[0].size() - pos - 4 && keys.size() < f[1].size() / 8;
    if (ok) keys.push_back(str(f[0].subspan(pos + 4, n)));
    pos += 4 + static_cast<size_t>(ok ? n : 0);
  }
  if (!ok || keys.size() != f[1].size() / 8) {
    ++stats_.rejected;
    return fail(id, c, fmt::format("malformed many-key request ({} bytes)", p.size()));
  }
  // The reply's pieces: small headers of our own, stored values shared with the store (as a
  // get's are), so a client that does not read its reply holds no copy of them.
  std::vector<Shared> pieces;
  auto cur = std::make_shared<Bytes>();
  size_t payload = 0, values = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = kv_.find(keys[i]);
    if (it == kv_.end() || it->second.version <= get64(f[1].data() + 8 * i)) {
      cur->push_back(0);
      continue;
    }
    values += it->second.value->size();
    if (values > kManyBytes)
      return send(id, c, 'E',
                  bytes(fmt::format("many-key request: values past {} bytes at key {} of {}",
                                    kManyBytes, i, keys.size())));
    cur->push_back(1);
    put64(*cur, it->second.version);
    put32(*cur, static_cast<uint32_t>(it->second.value->size()));
    payload += cur->size() + it->second.value->size();
    pieces.push_back(std::move(cur));
    pieces.push_back(it->second.value);
    cur = std::make_shared<Bytes>();
  }
  payload += cur->size();
  if (!cur->empty()) pieces.push_back(std::move(cur));
  stats_.gets += keys.size();
  auto head = std::make_shared<Bytes>();
  put32(*head, static_cast<uint32_t>(1 + 4 + payload));
  head->push_back('V');
  put32(*head, static_cast<uint32_t>(payload));
  c.out_bytes += head->size() + payload;
  c.out.emplace_back(std::move(head), 0);
  for (Shared& piece : pieces)
    if (!piece->empty()) c.out.emplace_back(std::move(piece), 0);
  dirty_.insert(id);
}

void Core::answer(Id id, Conn& c) {
  auto it = kv_.find(c.key);
  if (it == kv_.end() || it->second.version <= c.after) return;
  Bytes ver;
  if (c.versioned) put64(ver, it->second.version);  // the version rides after the value
  const Shared value = it->second.value;
  unpark(id, c);
  send(id, c, 'V', {}, value, ver);
}

void Core::unpark(Id id, Conn& c) {
  if (!c.parked) return;
  c.parked = false;
  timers_.erase({c.until, id});
  auto [b, e] = waiters_.equal_range(c.key);
  for (auto w = b; w != e; ++w)
    if (w->second == id) {
      waiters_.erase(w);
      break;
    }
  dirty_.insert(id);  // it may read its next request
}

const std::deque<std::pair<Shared, size_t>>* Core::output(Id id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : &it->second.out;
}

void Core::sent(Id id, size_t n, Clock::time_point now) {
  Conn* c = find(id);
  if (!c) return;
  c->out_bytes -= std::min(n, c->out_bytes);
  while (n > 0 && !c->out.empty()) {
    auto& [buf, off] = c->out.front();
    const size_t take = std::min(n, buf->size() - off);
    off += take;
    n -= take;
    if (off == buf->size()) c->out.pop_front();
  }
  if (c->out.empty()) process(id, *c, now);  // requests held back behind a reply
}

bool Core::closing(Id id) const {
  auto it = conns_.find(id);
  return it == conns_.end() || it->second.closing;
}

void Core::close(Id id) {
  Conn* c = find(id);
  if (!c) return;
  unpark(id, *c);
  release(*c);
  timers_.erase({c->hello_by, id});
  unauthenticated_.erase(id);
  starved_.erase(id);
  dirty_.erase(id);
  const std::string name = c->name;
  conns_.erase(id);
  if (name.empty()) return;
  auto it = kv_.find("gone");
  std::string list = it == kv_.end() ? "" : str(*it->second.value);
  list += name + "\n";
  for (size_t lines = std::count(list.begin(), list.end(), '\n');
       lines > RendezvousServer::kGoneKept; --lines)
    list.erase(0, list.find('\n') + 1);
  store("gone", Bytes(list.begin(), list.end()));
}

Clock::time_point Core::tick(Clock::time_point now) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    const Id id = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Conn* c = find(id);
    if (!c) continue;
    if (c->auth == Auth::kNone) {
      ++stats_.rejected;
      fail(id, *c, "no job token within the handshake deadline");
    } else if (c->parked) {
      unpark(id, *c);
      send(id, *c, 'N');
      process(id, *c, now);
    }
  }
  return timers_.empty() ? Clock::time_point::max() : timers_.begin()->first;
}

std::vector<Core::Id> Core::take_dirty() {
  std::vector<Id> v(dirty_.begin(), dirty_.end());
  dirty_.clear();
  return v;
}

RendezvousServer::Stats Core::stats() const {
  RendezvousServer::Stats s = stats_;
  s.clients = conns_.size();
  s.keys = kv_.size();
  s.stored_bytes = stored_;
  return s;
}

}  // namespace weightcast::transport::rdv
