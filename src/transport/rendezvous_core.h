// The rendezvous server's state machine, without sockets: connections feed it bytes and take
// replies from it, so one event loop (rendezvous.cpp) can serve thousands of peers and a fuzzer
// can drive every input path in-process.
//
// Wire format: every frame is a 4-byte big-endian length then the payload; a payload is an op
// byte then fields, each a 4-byte big-endian length and bytes.
//   'H' token                     -> 'O' | 'E' message      (must be the first frame)
//   'P' key value                 -> 'O' version(8B) | 'E' message
//   'D' key                       -> 'O' | 'E' message      (deletes the key)
//   'G' key wait_ms(4B)           -> 'V' value | 'N'
//   'W' key after(8B) wait_ms(4B) -> 'V' value version(8B) | 'N'   (a value put after `after`)
//   'I' name                      -> 'O' | 'E'  (names the session: its close is recorded under
//   "gone")
//   'M' keys afters               -> 'V' answers | 'E' message  (many keys at once, no wait:
//        keys is n x (length(4B) key), afters n x 8B; answers n x (0 | 1 version(8B)
//        length(4B) value), 1 where the key holds a value put after its `after`; at most
//        kManyKeys keys and kManyBytes of values)
// The token is the job token (the controller: it may write any key) or a peer token
// (peer_token(): it may write only keys under its identity, "trainer/3/..."). Errors about a
// request's content ('E' to a put or delete) leave the connection open; a malformed frame, a
// wrong token or a missed handshake deadline gets one 'E' frame and the connection is closed.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "weightcast/transport/rendezvous.h"

namespace weightcast::transport::rdv {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<uint8_t>;
using Shared = std::shared_ptr<const Bytes>;

void put32(Bytes& b, uint32_t v);
uint32_t get32(const uint8_t* p);
void put64(Bytes& b, uint64_t v);
uint64_t get64(const uint8_t* p);
void put_field(Bytes& b, std::span<const uint8_t> f);
std::span<const uint8_t> bytes(const std::string& s);
// Splits a payload's fields (after the op byte); false when they do not tile it exactly.
bool fields(std::span<const uint8_t> payload, size_t want,
            std::vector<std::span<const uint8_t>>& out);
bool constant_time_equal(const std::string& a, const std::string& b);
// The identity ("trainer/3") a peer token was issued for, if `token` is one for `job_token`.
std::optional<std::string> peer_identity(const std::string& job_token, const std::string& token);

class Core {
 public:
  using Id = uint64_t;
  static constexpr size_t kManyKeys = 16384, kManyBytes = 16 << 20;
  Core(std::string token, RendezvousLimits limits);

  // A new connection. Over max_clients it gets an error and is closing at once; over
  // max_unauthenticated the oldest connection still in its handshake is evicted.
  void open(Id id, Clock::time_point now);
  // How many bytes the connection may deliver now (0: stop reading it for the moment). One frame
  // is read at a time, and its body only once the server-wide input budget has room for it.
  size_t room(Id id) const;
  void input(Id id, std::span<const uint8_t> data, Clock::time_point now);
  // Replies waiting to be sent, in order; `sent` drops n bytes of them.
  const std::deque<std::pair<Shared, size_t>>* output(Id id) const;
  void sent(Id id, size_t n, Clock::time_point now);
  // True once the connection must close (after its output is flushed).
  bool closing(Id id) const;
  // The peer went away or the socket failed: forget it (and record its name under "gone").
  void close(Id id);
  // Expires handshakes and waits; returns the next time it has something to expire.
  Clock::time_point tick(Clock::time_point now);
  // Connections whose output, room or closing state changed since the last call.
  std::vector<Id> take_dirty();

  RendezvousServer::Stats stats() const;
  size_t stored_bytes() const { return stored_; }
  size_t buffered_bytes() const { return buffered_; }
  size_t connections() const { return conns_.size(); }

 private:
  enum class Auth { kNone, kPeer, kJob };
  struct Conn {
    Bytes in;
    size_t reserved = 0;  // of the input budget, for the frame being read
    std::deque<std::pair<Shared, size_t>> out;
    size_t out_bytes = 0;
    Auth auth = Auth::kNone;
    std::string identity;  // a peer token's "role/rank"
    std::string name;      // from 'I'
    Clock::time_point hello_by;
    bool closing = false;
    // A parked wait ('G' / 'W' on a key that has no new enough value yet).
    bool parked = false, versioned = false;
    std::string key;
    uint64_t after = 0;
    Clock::time_point until;
  };
  struct Entry {
    Shared value;
    uint64_t version = 0;
  };

  Conn* find(Id id);
  void process(Id id, Conn& c, Clock::time_point now);
  void handle(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point now);
  void hello(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point now);
  void get(Id id, Conn& c, std::span<const uint8_t> p, Clock::time_point now);
  void many(Id id, Conn& c, std::span<const uint8_t> p);
  std::string may_write(const Conn& c, const std::string& key) const;
  void store(const std::string& key, Bytes value);
  void erase(const std::string& key);
  void answer(Id id, Conn& c);  // a parked wait that can be answered now
  void send(Id id, Conn& c, char op, std::span<const uint8_t> field = {}, Shared tail = {},
            std::span<const uint8_t> after = {});
  void fail(Id id, Conn& c, const std::string& why);  // one error frame, then close
  void unpark(Id id, Conn& c);
  void release(Conn& c);

  std::string token_;
  RendezvousLimits limits_;
  size_t max_frame_;
  std::unordered_map<Id, Conn> conns_;
  std::set<std::pair<Clock::time_point, Id>> timers_;  // handshakes and parked waits
  std::multimap<std::string, Id> waiters_;
  std::set<Id> unauthenticated_;  // ids still in their handshake, oldest first (ids only grow)
  std::map<std::string, Entry> kv_;
  uint64_t version_ = 0;
  size_t stored_ = 0, buffered_ = 0;
  std::set<Id> dirty_, starved_;  // starved: waiting for input budget
  RendezvousServer::Stats stats_;
};

}  // namespace weightcast::transport::rdv
