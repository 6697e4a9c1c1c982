// One progress thread per GPU. It owns the GPU's NIC group: posts writes (striped over the NICs,
// retried on back-pressure), polls every completion queue (which on manual-progress providers is
// also what makes data land), feeds arrived immediates to the GPU's ImmCounters and tracks write
// batches. Other threads talk to it through a command queue; nothing on the data path blocks it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "weightcast/transport/imm_counters.h"
#include "weightcast/transport/nic_group.h"

namespace weightcast::transport {

struct GroupWrite {
  const Region* src = nullptr;
  uint64_t src_off = 0;
  uint32_t peer = 0;  // group peer id from connect()
  const RemoteRegion* dst = nullptr;
  uint64_t dst_off = 0;
  uint64_t len = 0;
  bool has_imm = false;
  uint32_t imm = 0;
  bool in_place = false;  // WriteOp::in_place: the bytes are there already (src is not read)
};

struct ProgressStats {
  uint64_t writes = 0, shards_posted = 0, shards_done = 0, imms = 0, errors = 0, eagain = 0;
  uint64_t poll_errors = 0;    // the completion queue itself failed (not one op)
  uint64_t orphan_errors = 0;  // error completions whose op this engine did not post
  std::string last_poll_error, last_orphan_error;
  uint64_t post_ns = 0;             // time spent inside the NICs' post calls
  std::vector<uint64_t> nic_bytes;  // bytes posted per NIC
};

class ProgressEngine {
 public:
  using Clock = std::chrono::steady_clock;

  // Opens the NICs and starts the thread. `counters` receives every immediate; it must outlive
  // the engine.
  static Result<std::unique_ptr<ProgressEngine>> start(const std::vector<DomainConfig>& nics,
                                                       ImmCounters* counters);
  ~ProgressEngine();
  ProgressEngine(const ProgressEngine&) = delete;
  ProgressEngine& operator=(const ProgressEngine&) = delete;

  size_t nics() const { return nic_count_; }
  Capabilities caps();
  std::vector<uint8_t> address();
  Result<uint32_t> connect(std::span<const uint8_t> peer_address);
  Result<Region> register_memory(void* base, uint64_t len, MemKind kind);
  Result<Region> register_split(void* direct, MemKind kind, void* landing, uint64_t len);
  bool writes_direct(std::span<const uint8_t> peer_address);
  Status deregister(const Region& r);
  // Domain::device_window of NIC 0 on the group peer's region `dst`: where a kernel of this
  // process writes [off, off + len) of it straight (then in_place writes carry the immediates).
  Result<void*> device_window(uint32_t peer, const RemoteRegion& dst, uint64_t off, uint64_t len);

  // Queues writes (regions must stay registered until the batch completes); returns a batch id.
  uint64_t submit(std::vector<GroupWrite> writes);
  // Waits until every shard of the batch completed, or fails at once with the first error of
  // one of its shards (naming the write and the provider's reason), or kTimeout with how many
  // shards are outstanding. A batch is forgotten once it completed and was waited for; one that
  // failed or timed out is forgotten when its last shard completes (or by drain()).
  // `bad_peers` (optional) receives the group peers whose shards failed or are still out.
  Status wait(uint64_t batch, Clock::time_point deadline,
              std::vector<uint32_t>* bad_peers = nullptr);
  // Whether the batch is settled, without waiting and without giving up on it: false while its
  // shards are in flight (wait or probe it again later); true once wait() would return at once,
  // with what wait() would return in `status` (and the batch is forgotten as wait() would).
  bool probe(uint64_t batch, Status& status);
  // The fence after a failure: waits until no shard of any batch is queued or in flight (each
  // completed or failed), then forgets every batch. kTimeout says how many are still out; the
  // caller must not reuse any memory those writes read, nor write where they land, until a later
  // drain() succeeds.
  Status drain(Clock::time_point deadline);
  // Shards queued or in flight, over all batches.
  uint64_t outstanding() const;
  ProgressStats stats() const;

 private:
  ProgressEngine() = default;
  void loop();
  template <typename T>
  T call(std::function<T()> fn);

  struct Batch {
    uint64_t remaining = 0;
    std::vector<std::string> errors;
    bool abandoned = false;  // its waiter gave up (error or deadline): erase when done
    std::map<uint32_t, uint64_t> out_by_peer;  // group peer -> its shards not yet completed
    std::set<uint32_t> failed_peers;
  };
  // Under batch_mu_: one shard of `it` is done (failed with `error` when given).
  void shard_done(std::map<uint64_t, Batch>::iterator it, uint32_t peer, const std::string* error);
  void post_nic(size_t n, bool& busy);
  void poll_nic(size_t n, std::vector<Completion>& comps, bool& busy);
  void queue_batch(uint64_t batch, const std::vector<GroupWrite>& writes);
  // Fails every shard queued or posted to group peer `peer` (its connection was set up again
  // for a new process) and drops the queued ones. On the progress thread.
  void discard_peer(uint32_t peer);

  std::unique_ptr<NicGroup> group_;
  size_t nic_count_ = 0;
  ImmCounters* counters_ = nullptr;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::mutex cmd_mu_;
  std::deque<std::function<void()>> commands_;
  std::deque<std::pair<uint64_t, std::vector<GroupWrite>>> incoming_;
  uint64_t next_batch_ = 1;

  mutable std::mutex batch_mu_;
  std::condition_variable batch_cv_;
  std::map<uint64_t, Batch> batches_;
  ProgressStats stats_;

  // Owned by the progress thread.
  std::vector<std::deque<WriteOp>> pending_;               // per NIC
  std::map<uint32_t, std::vector<uint8_t>> peer_address_;  // group peer -> address it links
  std::vector<uint64_t> piece_max_;                        // per NIC: largest single write
  std::vector<bool> ordered_;                              // per NIC: writes land in order
  struct ShardOf {
    uint64_t batch;
    uint32_t peer;  // group peer
  };
  std::unordered_map<uint64_t, ShardOf> shard_batch_;  // shard id -> its batch and peer
  uint64_t next_shard_ = 1;
};

}  // namespace weightcast::transport
