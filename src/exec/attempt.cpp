// One attempt of TrainerExecutor::push, as a pipeline of small stages:
//   Readiness        the receivers' arms, awaited on a thread of its own
//   WriteStage       writes bound to their receiver at submission, batches, the staging ranges
//                    they still read (ring admission), errors that name the receiver
//   ProjectionQueue  projections whose writes have not gone out yet (GPU marks), released in
//                    order once the receivers are ready
//   Attempt          walks the rank's tasks: a phase's gathers (collective_), projections (CPU or
//                    GPU batches), writes; the mirror stage is the executor's ShardMirror.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <future>
#include <thread>

#include "weightcast/exec/executor.h"
#include "weightcast/exec/project_cuda.h"
#include "weightcast/plan/project.h"

namespace weightcast::exec {

using transport::GroupWrite;
using transport::Imm;

namespace {
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
// A projection's staging range (output, then scales where planned).
std::pair<uint64_t, uint64_t> staged(const plan::Project& q) {
  return {q.staging_off,
          q.scale_dest >= 0 ? q.scale_off + q.scale_box.numel() * 4 : q.staging_off + q.out_bytes};
}
// Whether one copy brings a projection's output and scales to the host.
bool one_copy(const plan::Project& q) {
  return q.scale_dest < 0 || q.scale_off == q.staging_off + q.out_bytes;
}
}  // namespace

// The receivers' readiness: started at once, awaited by the first write. A receiver that armed
// under a new incarnation is reconnected to before anything is written to it.
class TrainerExecutor::Readiness {
 public:
  Readiness(TrainerExecutor& ex, uint8_t gen, Clock::time_point deadline, const ReadyFn& ready)
      : ex_(ex), gen_(gen), deadline_(deadline) {
    if (!ready) {  // every receiver armed `gen` at the incarnation in use
      for (const auto& [r, t] : ex_.receivers_) ex_.armed_[r] = Armed{gen, t.incarnation};
      return;
    }
    f_ = std::async(std::launch::async, ready);
  }
  // Whether awaiting would not block.
  bool settled() const {
    return !f_.valid() || f_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }
  Status await(double& seconds) {
    if (!f_.valid()) return Status::ok();
    const auto tw = Clock::now();
    auto r = f_.get();
    seconds += since(tw);
    ex_.span("waiting for the receivers' arms", StepTrace::kReadiness, tw, gen_);
    if (!r) return r.status();
    for (const auto& [rc, a] : *r) {
      if (!ex_.receivers_.count(rc)) continue;
      if (Status s = ex_.rejoin(rc, a.incarnation, deadline_); !s)
        return Status(s.code(), fmt::format("trainer rank {} step {}: reconnecting to receiver "
                                            "{} (incarnation {}): {}",
                                            ex_.rank_, gen_, rc, a.incarnation, s.message()));
      ex_.armed_[rc] = a;
    }
    return Status::ok();
  }

 private:
  TrainerExecutor& ex_;
  uint8_t gen_;
  Clock::time_point deadline_;
  std::future<Result<std::map<uint32_t, Armed>>> f_;
};

// Writes: bound to their receiver's connection, descriptor and generation only when submitted
// (after readiness), tracked per batch with the staging range each batch still reads.
class TrainerExecutor::WriteStage {
 public:
  WriteStage(TrainerExecutor& ex, uint8_t gen, Clock::time_point deadline)
      : ex_(ex), gen_(gen), deadline_(deadline) {}

  void submit(std::vector<PendingWrite>& ws, uint64_t lo, uint64_t hi) {
    if (ws.empty()) return;
    std::vector<GroupWrite> out;
    out.reserve(ws.size());
    std::set<uint32_t> to;
    for (PendingWrite& p : ws) {
      Target& tg = ex_.receivers_.at(p.receiver);
      p.g.peer = tg.peer;
      p.g.dst = &tg.tensors.at(p.dest);
      auto a = ex_.armed_.find(p.receiver);  // one the ready callback left out armed `gen`
      p.g.imm = Imm{a == ex_.armed_.end() ? gen_ : a->second.generation, p.phase,
                    static_cast<uint16_t>(ex_.rank_)}
                    .encode();
      out.push_back(p.g);
      to.insert(p.receiver);
    }
    ws.clear();
    const uint64_t b = ex_.engine_->submit(std::move(out));
    ex_.batch_receivers_[b] = std::move(to);
    batches_.push_back(b);
    if (hi > lo) {
      inflight_.push_back({lo, hi, b});
      uint64_t held = 0;
      for (const Inflight& f : inflight_) held += f.hi - f.lo;
      peak_ = std::max(peak_, held);
    }
  }
  uint64_t peak() const { return peak_; }

  // Ring admission: waits for the writes still reading staging [lo, hi).
  Status admit(uint64_t lo, uint64_t hi, double& seconds) {
    const auto tr = Clock::now();
    while (!inflight_.empty()) {
      bool busy = false;
      for (const Inflight& f : inflight_) busy = busy || (f.lo < hi && lo < f.hi);
      if (!busy) break;
      const Inflight f = inflight_.front();
      inflight_.pop_front();
      if (Status s = waited(f.batch); !s) return s;
      // Waited for (and forgotten by the engine): the end of the step must not wait again.
      batches_.erase(std::find(batches_.begin(), batches_.end(), f.batch));
    }
    seconds += since(tr);
    if (Clock::now() - tr > std::chrono::microseconds(1))
      ex_.span("ring wait", StepTrace::kCompute, tr, gen_);
    return Status::ok();
  }

  Status wait_all() {
    for (uint64_t b : batches_)
      if (Status s = waited(b); !s) return s;
    batches_.clear();
    return Status::ok();
  }

 private:
  // A batch that failed names the receivers whose writes failed or are still out.
  Status waited(uint64_t b) {
    std::vector<uint32_t> bad;
    Status s = ex_.engine_->wait(b, deadline_, &bad);
    if (s) return s;
    std::set<uint32_t> named;
    for (uint32_t p : bad)
      for (const auto& [r, t] : ex_.receivers_)
        if (t.peer == p) named.insert(r);
    if (named.empty())
      if (auto it = ex_.batch_receivers_.find(b); it != ex_.batch_receivers_.end())
        named = it->second;
    return Status(s.code(), fmt::format("trainer rank {} step {}: writes to receiver {}: {}",
                                        ex_.rank_, gen_, fmt::join(named, ", "), s.message()));
  }
  struct Inflight {
    uint64_t lo, hi, batch;
  };
  TrainerExecutor& ex_;
  uint8_t gen_;
  Clock::time_point deadline_;
  std::deque<Inflight> inflight_;
  std::vector<uint64_t> batches_;
  uint64_t peak_ = 0;  // most staging bytes in flight at once
};

// Projections whose writes have not gone out yet, oldest first: their staging range, their mark
// on the GPU stream (kCuda; -1 once waited for, or on the CPU) and the writes reading them. On
// the GPU up to kMarks batches are queued ahead, so the GPU computes while earlier writes are
// posted. Writes straight from shards wait in `direct`.
class TrainerExecutor::ProjectionQueue {
 public:
  struct Produced {
    uint64_t lo, hi;
    int mark;
    std::vector<PendingWrite> writes;
  };
  ProjectionQueue(TrainerExecutor& ex, Readiness& ready, WriteStage& writes, StepReport& rep)
      : ex_(ex), ready_(ready), writes_(writes), rep_(rep) {}

  std::deque<Produced>& produced() { return produced_; }
  std::vector<PendingWrite>& direct() { return direct_; }
  bool overlaps(uint64_t lo, uint64_t hi) const {
    for (const Produced& e : produced_)
      if (e.lo < hi && lo < e.hi) return true;
    return false;
  }

  // Sends the writes of the oldest `n` projections (after their marks) and the direct ones, and
  // drops those projections; `keep_last` keeps the newest one, so writes that follow it are still
  // tied to its staging range. `block` = false: only if the receivers are ready already (else
  // everything stays queued for a later release).
  Status release(size_t n, bool block, bool keep_last) {
    if (!block && !ready_.settled()) return Status::ok();
    n = std::min(n, produced_.size());
    const size_t drop = keep_last && n == produced_.size() && n > 0 ? n - 1 : n;
    bool any = !direct_.empty();
    for (size_t i = 0; i < n; ++i) any = any || !produced_[i].writes.empty();
    if (any) {
      if (Status r = ready_.await(rep_.ready_s); !r) return r;
      writes_.submit(direct_, 0, 0);
    }
    for (size_t i = 0; i < n && any; ++i) {
      Produced& e = produced_[i];
      if (e.mark >= 0) {
        const auto tm = Clock::now();
        Status m = ex_.proj_marks_.wait(static_cast<size_t>(std::exchange(e.mark, -1)));
        rep_.project_s += since(tm);
        ex_.span("waiting for GPU projections", StepTrace::kCompute, tm, rep_.step);
        if (!m)
          return Status(m.code(), fmt::format("trainer rank {} step {}: {}", ex_.rank_, rep_.step,
                                              m.message()));
      }
      writes_.submit(e.writes, e.lo, e.hi);
    }
    produced_.erase(produced_.begin(), produced_.begin() + static_cast<long>(drop));
    return Status::ok();
  }
  Status release_all() { return release(produced_.size(), true, false); }

  // At most kMarks - 1 batches in flight on the GPU besides the one about to be queued: the
  // oldest one's writes go out now (a mark's slot is reused only once no projection waits on it).
  Status bound_marks() {
    for (;;) {
      size_t groups = 0, oldest = 0;
      for (size_t k = 0; k < produced_.size(); ++k)
        if (produced_[k].mark >= 0 && (k == 0 || produced_[k].mark != produced_[k - 1].mark))
          ++groups;
      while (oldest < produced_.size() && produced_[oldest].mark == produced_[0].mark) ++oldest;
      if (groups + 1 < kMarks) return Status::ok();
      if (Status fs = release(oldest, true, false); !fs) return fs;
    }
  }

 private:
  TrainerExecutor& ex_;
  Readiness& ready_;
  WriteStage& writes_;
  StepReport& rep_;
  std::deque<Produced> produced_;
  std::vector<PendingWrite> direct_;
};

// Walks the rank's tasks for one attempt.
class TrainerExecutor::Attempt {
 public:
  Attempt(TrainerExecutor& ex, uint8_t gen, Clock::time_point deadline, const ReadyFn& ready)
      : ex_(ex),
        gen_(gen),
        deadline_(deadline),
        device_(ex.shard_kind_ == MemoryKind::kCuda),
        tasks_(ex.plan_.senders[ex.rank_].tasks),
        start_(ex, gen, deadline),
        ready_(ex, gen, deadline, ready),
        writes_(ex, gen, deadline),
        queue_(ex, ready_, writes_, rep_),
        rejoined0_(ex.rejoined_) {
    rep_.step = gen;
  }

  Result<StepReport> run(uint64_t max_writes) {
    const auto t0 = Clock::now();
    const transport::ProgressStats stats0 = ex_.engine_->stats();
    if (Status s = start_.status; !s) return s;
    if (device_)
      if (Status s =
              ex_.mirror_.start_step(gen_, [&](int p) { return ex_.device_shard_.count(p); });
          !s)
        return named(s);
    if (Status s = pump(); !s) return s;
    for (size_t ti = 0; ti < tasks_.size(); ++ti) {
      if (rep_.writes >= max_writes) break;
      Status s;
      switch (tasks_[ti].op) {
        case plan::Task::Op::kGather:
          s = gather_phase(ti);
          break;
        case plan::Task::Op::kProject:
          s = project(ti);
          break;
        case plan::Task::Op::kWrite:
          s = queue_write(tasks_[ti]);
          break;
      }
      if (!s) return s;
    }
    if (Status s = finish(); !s) return s;
    rep_.mirror_s = ex_.mirror_.seconds();
    rep_.total_s = since(t0);
    ex_.span("push", StepTrace::kStep, t0, gen_);
    const transport::ProgressStats stats1 = ex_.engine_->stats();
    rep_.post_s = static_cast<double>(stats1.post_ns - stats0.post_ns) * 1e-9;
    for (size_t n = 0; n < stats1.nic_bytes.size(); ++n) {
      const uint64_t before = n < stats0.nic_bytes.size() ? stats0.nic_bytes[n] : 0;
      rep_.nic_bytes.push_back(stats1.nic_bytes[n] - before);
      rep_.nic_gbps.push_back(static_cast<double>(stats1.nic_bytes[n] - before) / rep_.total_s /
                              1e9);
    }
    rep_.staging_peak = writes_.peak();
    rep_.rejoined = ex_.rejoined_ - rejoined0_;
    return rep_;
  }

 private:
  // What others wait for comes first: as a gather root, done with last step's boxes, so members
  // may write this step's. (Before readiness starts: a member learns of the open at once.)
  struct Start {
    Status status;
    Start(TrainerExecutor& ex, uint8_t gen, Clock::time_point deadline) {
      ex.counters_.begin_generation(gen);  // this rank's gathers count this generation
      if (ex.shard_kind_ == MemoryKind::kCuda)
        if (Status s = cuda_use_device(ex.cuda_device_); !s) {
          status = s;
          return;
        }
      if (Status s = ex.collective_->open(gen, deadline); !s)
        status = Status(s.code(),
                        fmt::format("trainer rank {} step {}: {}", ex.rank_, gen, s.message()));
    }
  };

  Status named(const Status& s) const {
    return Status(s.code(),
                  fmt::format("trainer rank {} step {}: {}", ex_.rank_, gen_, s.message()));
  }
  // Gather pieces go to their roots as early as the roots allow (again between projections).
  Status pump() {
    Status s = ex_.collective_->pump(gen_, deadline_);
    return s ? s : named(s);
  }

  // A phase's gathers run together, before its projections; what is queued goes out first if
  // the receivers are ready. On the GPU the gathered boxes are copied to the device buffer.
  Status gather_phase(size_t& ti) {
    if (Status fs = queue_.release(queue_.produced().size(), false, true); !fs) return fs;
    std::vector<uint32_t> batch{tasks_[ti].index};
    const uint16_t phase = ex_.plan_.gathers[tasks_[ti].index].phase;
    while (ti + 1 < tasks_.size() && tasks_[ti + 1].op == plan::Task::Op::kGather &&
           ex_.plan_.gathers[tasks_[ti + 1].index].phase == phase)
      batch.push_back(tasks_[++ti].index);
    const auto tg = Clock::now();
    // (Pieces are read from host memory: the collective's shard lookup mirrors GPU shards.)
    if (Status s = ex_.collective_->run(gen_, phase, batch, deadline_); !s) return named(s);
    if (device_ && !ex_.collective_->on_device()) {  // (else gathered on the GPU already)
      const Buffer& g = ex_.collective_->buffer();
      if (ex_.device_gbuf_.size() < g.size()) {
        auto b = Buffer::allocate(MemoryKind::kCuda, g.size(), ex_.cuda_device_);
        if (!b) return b.status();
        ex_.device_gbuf_ = std::move(b).value();
      }
      for (uint32_t gi : batch) {  // the boxes this root gathered (members hold nothing)
        const std::byte* h = ex_.collective_->gathered(gi);
        if (!h) continue;
        const plan::Gather& ga = ex_.plan_.gathers[gi];
        const uint64_t n = static_cast<uint64_t>(ga.box.numel()) *
                           core::dtype_size(ex_.in_.trainer.params[ga.param].dtype);
        // Queued before the projections that read it, on the same stream.
        if (Status s = copy_host_to_device_async(ex_.device_gbuf_.data() + (h - g.data()), h, n);
            !s)
          return s;
      }
    }
    rep_.gather_s += since(tg);
    ex_.span("gathers", StepTrace::kCompute, tg, gen_);
    return Status::ok();
  }

  // On the GPU, this projection and the next ones of the phase whose staging follows on from it
  // run as one batch (launches, not bytes, set the time of a small model's many projections).
  // Returns the batch, its staging end and its last task index.
  std::vector<const plan::Project*> gpu_batch(size_t ti, uint64_t& bhi, size_t& last) const {
    const plan::Project& p = ex_.plan_.projects[tasks_[ti].index];
    std::vector<const plan::Project*> batch{&p};
    bhi = staged(p).second;
    last = ti;
    if (!device_ || !one_copy(p)) return batch;
    int64_t elems = p.box.numel();
    for (size_t j = ti + 1; j < tasks_.size() && batch.size() < kBatchProjects; ++j) {
      if (tasks_[j].op == plan::Task::Op::kWrite) continue;
      if (tasks_[j].op != plan::Task::Op::kProject) break;
      const plan::Project& q = ex_.plan_.projects[tasks_[j].index];
      const auto [qlo, qhi] = staged(q);
      if (qlo != bhi || !one_copy(q) || elems + q.box.numel() > kBatchElems) break;
      batch.push_back(&q);
      bhi = qhi;
      elems += q.box.numel();
      last = j;
    }
    return batch;
  }

  Status project(size_t ti) {
    if (Status s = pump(); !s) return s;
    const plan::Project& p = ex_.plan_.projects[tasks_[ti].index];
    const auto [lo, hi] = staged(p);
    if (device_ && batch_mark_ >= 0 && ti <= batch_last_) {  // queued with its batch's first
      ++rep_.projects;
      queue_.produced().push_back({lo, hi, batch_mark_, {}});
      return Status::ok();
    }
    uint64_t bhi = hi;
    size_t last = ti;
    const auto batch = gpu_batch(ti, bhi, last);
    // On the CPU the earlier projections' writes go out now. On the GPU they stay queued behind
    // their marks, unless this batch's staging overlaps one of theirs.
    if (!device_ || queue_.overlaps(lo, bhi))
      if (Status fs = queue_.release_all(); !fs) return fs;
    if (Status s = writes_.admit(lo, bhi, rep_.ring_wait_s); !s) return s;
    if (ex_.debug_project_delay_ms_ > 0)  // test hook: a root slow to project (see create)
      std::this_thread::sleep_for(std::chrono::milliseconds(ex_.debug_project_delay_ms_));
    const auto tp = Clock::now();
    int mark = -1;
    if (Status s = device_ ? project_gpu(batch, lo, hi, bhi, last, mark) : project_cpu(p); !s)
      return s;
    rep_.project_s += since(tp);
    ex_.span(device_ ? "projections queued (GPU)" : "projection", StepTrace::kCompute, tp, gen_);
    ++rep_.projects;
    if (Status s = queue_.bound_marks(); !s) return s;
    queue_.produced().push_back({lo, hi, mark, {}});
    return Status::ok();
  }

  Status project_cpu(const plan::Project& p) {
    const auto& dp = ex_.in_.inference.params[ex_.plan_.dests[p.dest].param];
    auto res = [&](const plan::Project::Input& inp) -> plan::Held {
      if (inp.gather >= 0)
        return {ex_.plan_.gathers[inp.gather].box, ex_.collective_->gathered(inp.gather)};
      const int src = dp.parts.at(inp.part).src;
      auto it = ex_.layout_.by_param.find(src);
      if (it == ex_.layout_.by_param.end()) return {};
      return {ex_.layout_.shards[it->second].box, ex_.bound_.at(src).data};
    };
    Status s =
        plan::project_cpu(ex_.in_, ex_.plan_, p, res, ex_.staging_.data(), ex_.staging_.size());
    return s ? s : named(s);
  }

  // From the device shards or the device copy of the gather buffer into device staging; then
  // the output (and scales) to the registered host staging, and one mark for the batch.
  // The outputs of the batch's projections that go straight into their receivers' GPU tensors
  // (TrainerExecutor::in_place_), once the receivers are ready: a kernel then writes the live
  // weights. A tensor that cannot be mapped here (host memory, another device) is projected into
  // staging and written as usual.
  Status in_place_outputs(const std::vector<const plan::Project*>& batch,
                          std::vector<ProjectOut>& outs) {
    TrainerExecutor& x = ex_;
    if (x.in_place_.empty()) return Status::ok();
    for (size_t k = 0; k < batch.size(); ++k) {
      const plan::Project& q = *batch[k];
      const size_t id = static_cast<size_t>(&q - x.plan_.projects.data());
      const TrainerExecutor::InPlace& ip = x.in_place_[id];
      if (ip.out_base < 0) continue;
      if (Status r = ready_.await(rep_.ready_s); !r) return r;
      const uint32_t rc = x.plan_.dests[q.dest].receiver;
      auto out = x.window(rc, q.dest);
      if (!out) continue;
      float* scales = nullptr;
      if (q.scale_dest >= 0) {
        auto sw = x.window(rc, static_cast<uint32_t>(q.scale_dest));
        if (!sw) continue;
        scales = reinterpret_cast<float*>(*sw + ip.scale_base);
      }
      if (outs.empty()) outs.resize(batch.size());
      outs[k] = {*out + ip.out_base, scales};
      if (in_place_now_.empty()) in_place_now_.assign(x.plan_.projects.size(), 0);
      in_place_now_[id] = 1;
      ++rep_.in_place;
    }
    return Status::ok();
  }

  Status project_gpu(const std::vector<const plan::Project*>& batch, uint64_t lo, uint64_t hi,
                     uint64_t bhi, size_t last, int& mark) {
    TrainerExecutor& x = ex_;
    auto dres = [&](const plan::Project& q, const plan::Project::Input& inp) -> plan::Held {
      if (inp.gather >= 0 && x.collective_->on_device())
        return {x.plan_.gathers[inp.gather].box, x.collective_->gathered(inp.gather)};
      if (inp.gather >= 0)
        return {x.plan_.gathers[inp.gather].box,
                x.device_gbuf_.data() +
                    (x.collective_->gathered(inp.gather) - x.collective_->buffer().data())};
      const int src = x.in_.inference.params[x.plan_.dests[q.dest].param].parts.at(inp.part).src;
      auto it = x.layout_.by_param.find(src);
      auto d = x.device_shard_.find(src);
      if (it == x.layout_.by_param.end() || d == x.device_shard_.end()) return {};
      return {x.layout_.shards[it->second].box, d->second};
    };
    const plan::Project& p = *batch.front();
    std::vector<ProjectOut> outs;
    if (Status s = in_place_outputs(batch, outs); !s) return s;
    Status s =
        project_cuda_batch(x.in_, x.plan_, batch, dres, x.device_staging_.data(),
                           x.device_staging_.size(), x.scratch_, x.cuda_device_, nullptr, outs);
    // Outputs and scales in one copy when the scales follow the output (as planned, and always
    // in a batch of several); else the scales in a copy of their own.
    const bool one = one_copy(p);
    if (x.wire_gpu_) {  // written from device staging: no copy back
    } else if (s)
      s = copy_device_to_host_async(x.staging_.data() + lo, x.device_staging_.data() + lo,
                                    one ? bhi - lo : p.out_bytes);
    if (s && !one && !x.wire_gpu_)
      s = copy_device_to_host_async(x.staging_.data() + p.scale_off,
                                    x.device_staging_.data() + p.scale_off, hi - p.scale_off);
    mark = static_cast<int>(marks_++ % kMarks);
    batch_mark_ = mark;
    batch_last_ = last;
    if (s) s = x.proj_marks_.mark(static_cast<size_t>(mark));
    return s ? s : named(s);
  }

  // A write, queued behind its projection or with the direct ones; bound at submission.
  Status queue_write(const plan::Task& t) {
    const plan::Write& w = ex_.plan_.writes[t.index];
    const uint32_t r = ex_.plan_.dests[w.dest].receiver;
    if (!ex_.receivers_.count(r))
      return Status(Code::kInternal,
                    fmt::format("write {} goes to receiver {}, which rank {} never connected to",
                                t.index, r, ex_.rank_));
    GroupWrite g;
    if (w.project >= 0) {
      if (queue_.produced().empty())  // a plan invariant: a projection's writes follow it
        return Status(Code::kInternal,
                      fmt::format("write {} of projection {} comes before it in rank {}'s tasks",
                                  t.index, w.project, ex_.rank_));
      g.src = &ex_.staging_region_;
      g.src_off = w.src_off;
    } else if (auto wd = ex_.wire_.find(w.src_param); wd != ex_.wire_.end()) {  // from the GPU
      g.src = wd->second.region;
      g.src_off = wd->second.offset + w.src_off;
    } else {
      if (device_ && !ex_.mirror_.done(w.src_param)) {
        // What is queued streams while this shard comes to the host.
        if (Status fs = queue_.release(queue_.produced().size(), false, true); !fs) return fs;
        if (Status s = ex_.mirror_.wait(w.src_param); !s) return named(s);
      }
      auto it = ex_.bound_.find(w.src_param);
      if (it == ex_.bound_.end())
        return invalid("write {} reads a shard rank {} does not hold", t.index, ex_.rank_);
      g.src = it->second.region;
      g.src_off = it->second.offset + w.src_off;
    }
    g.dst_off = w.dst_off;
    g.len = w.len;
    g.has_imm = true;
    g.in_place =
        w.project >= 0 && !in_place_now_.empty() && in_place_now_[static_cast<size_t>(w.project)];
    (w.project >= 0 ? queue_.produced().back().writes : queue_.direct())
        .push_back({g, r, w.dest, static_cast<uint8_t>(w.phase)});
    rep_.bytes += w.len;
    ++rep_.writes;
    return Status::ok();
  }

  Status finish() {
    if (Status fs = queue_.release_all(); !fs) return fs;
    if (Status r = ready_.await(rep_.ready_s); !r) return r;  // a step without writes waits too
    if (device_)  // nothing of this step may still read the gather buffer when members refill it
      if (Status s = cuda_sync(); !s) return s;
    if (Status s = ex_.collective_->finish(deadline_); !s)  // pieces this rank sent to its roots
      return named(s);
    const auto tw = Clock::now();
    if (Status s = writes_.wait_all(); !s) return s;
    rep_.write_s = since(tw);
    ex_.span("drain: the last writes complete", StepTrace::kWrites, tw, gen_);
    return Status::ok();
  }

  TrainerExecutor& ex_;
  const uint8_t gen_;
  const Clock::time_point deadline_;
  const bool device_;
  const std::vector<plan::Task>& tasks_;
  StepReport rep_;
  Start start_;
  Readiness ready_;
  WriteStage writes_;
  ProjectionQueue queue_;
  const uint32_t rejoined0_;  // ex_.rejoined_ when the attempt began
  unsigned marks_ = 0;
  std::vector<char> in_place_now_;  // by project id: projected into its receiver's tensor
  int batch_mark_ = -1;             // the mark of the last batch of GPU projections queued, and
  size_t batch_last_ = 0;           // the task index of its last projection
};

Result<StepReport> TrainerExecutor::run_attempt(uint8_t gen, Clock::time_point deadline,
                                                uint64_t max_writes, const ReadyFn& ready) {
  Attempt a(*this, gen, deadline, ready);
  return a.run(max_writes);
}

}  // namespace weightcast::exec
