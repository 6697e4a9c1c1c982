// Plan replay on host memory. Executes each sender's task list in order exactly as an executor
// would (gather pieces into the root's staging, assemble and convert units, copy write ranges),
// checking every index and bound on the way, then compares imm counts, coverage and bytes.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#include "units.h"
#include "weightcast/plan/check.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/project.h"
#include "weightcast/plan/verify.h"

namespace weightcast::plan {

using core::Box;
using core::Shape;

namespace {

struct Shard {
  Box box;
  std::vector<std::byte> data;
};

struct Replayer {
  const spec::Inputs& in;
  const Plan& plan;
  uint64_t step;
  std::vector<std::map<int, Shard>> shards;  // per trainer rank: param -> shard
  std::vector<std::vector<std::byte>> dest;
  std::vector<std::vector<uint8_t>> written;
  std::vector<std::vector<uint32_t>> imms;  // per receiver, per phase
  VerifyResult res;
  VerifyProgress progress;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();

  // Tells `progress` how far `what` got, at most every progress.every_s seconds.
  void tell(const char* what, size_t done, size_t of) {
    if (!progress.fn) return;
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last).count() < progress.every_s && done < of) return;
    last = now;
    progress.fn(fmt::format("{} {}/{}", what, done, of));
  }

  [[noreturn]] void fail(const std::string& m) { throw std::runtime_error(m); }

  const Shard& shard(uint32_t rank, int param) {
    auto& m = shards[rank];
    auto it = m.find(param);
    if (it != m.end()) return it->second;
    const spec::Param& p = in.trainer.params[param];
    auto b = spec::local_box(p.shape, p.placement, in.trainer.mesh, rank);
    Shard s;
    s.box = b ? *b : Box{};
    s.box.nd = p.shape.nd;
    const size_t esz = core::dtype_size(p.dtype);
    s.data.resize(static_cast<size_t>(s.box.numel()) * esz);
    size_t e = 0;
    const uint64_t seed = pattern_seed(p.name);
    if (b)
      core::for_each_run(p.shape, *b, [&](int64_t off, int64_t len) {
        for (int64_t i = 0; i < len; ++i, ++e)
          core::store_from_float(p.dtype, pattern_value(seed, off + i, step), &s.data[e * esz]);
      });
    return m.emplace(param, std::move(s)).first->second;
  }

  // Copies box `b` (global coords) of a tensor laid out as `from_box` into a buffer laid out as
  // `to_box`, element size `esz`.
  static void copy_box(const Box& b, const Box& from_box, const std::byte* from, const Box& to_box,
                       std::byte* to, size_t esz) {
    const Box rf = core::relative(b, from_box), rt = core::relative(b, to_box);
    std::vector<int64_t> src_runs;
    core::for_each_run(from_box.extents(), rf, [&](int64_t off, int64_t len) {
      src_runs.push_back(off);
      src_runs.push_back(len);
    });
    size_t k = 0;
    int64_t consumed = 0;
    core::for_each_run(to_box.extents(), rt, [&](int64_t off, int64_t len) {
      while (len > 0) {
        const int64_t take = std::min(len, src_runs[k + 1] - consumed);
        std::memcpy(to + off * esz, from + (src_runs[k] + consumed) * esz, take * esz);
        off += take;
        len -= take;
        consumed += take;
        if (consumed == src_runs[k + 1]) {
          k += 2;
          consumed = 0;
        }
      }
    });
  }

  void run_gather(uint32_t s, const Gather& g, std::vector<std::byte>& staging) {
    if (g.root != s) return;  // members only send; the root's task does the data movement
    const spec::Param& p = in.trainer.params[g.param];
    const size_t esz = core::dtype_size(p.dtype);
    const uint64_t bytes = static_cast<uint64_t>(g.box.numel()) * esz;
    if (g.root_off + bytes > staging.size())
      fail(fmt::format("gather of '{}' at root {} runs past its staging ({} + {} > {})", p.name, s,
                       g.root_off, bytes, staging.size()));
    int64_t covered = 0;
    for (const auto& pc : g.pieces) {
      const Shard& sh = shard(pc.rank, g.param);
      if (!sh.box.contains(pc.box) || !g.box.contains(pc.box))
        fail(fmt::format("gather of '{}': rank {} does not hold piece {} (holds {})", p.name,
                         pc.rank, pc.box.str(), sh.box.str()));
      copy_box(pc.box, sh.box, sh.data.data(), g.box, staging.data() + g.root_off, esz);
      covered += pc.box.numel();
    }
    if (covered != g.box.numel())
      fail(fmt::format("gather of '{}' box {}: pieces cover {} of {} elements", p.name, g.box.str(),
                       covered, g.box.numel()));
    ++res.gathers;
  }

  void run_project(uint32_t s, uint32_t pid, std::vector<std::byte>& staging) {
    const Project& pr = plan.projects[pid];
    if (pr.sender != s)
      fail(fmt::format("project {} listed by sender {} but owned by {}", pid, s, pr.sender));
    const spec::DestParam& dp = in.inference.params[plan.dests[pr.dest].param];
    auto resolve = [&](const Project::Input& inp) -> Held {
      if (inp.gather >= 0) {
        const Gather& g = plan.gathers[inp.gather];
        if (g.root != s || g.param != dp.parts.at(inp.part).src) return {};
        return {g.box, staging.data() + g.root_off};
      }
      const Shard& sh = shard(s, dp.parts.at(inp.part).src);
      return {sh.box, sh.data.data()};
    };
    if (Status st = project_cpu(in, plan, pr, resolve, staging.data(), staging.size()); !st)
      fail(fmt::format("project {} (sender {}): {}", pid, s, st.message()));
    ++res.projects;
  }

  void run_write(uint32_t s, uint32_t wid, const std::vector<std::byte>& staging) {
    const Write& w = plan.writes[wid];
    if (w.sender != s)
      fail(fmt::format("write {} listed by sender {} but tagged sender {}", wid, s, w.sender));
    const std::byte* src;
    if (w.project >= 0) {
      if (plan.projects[w.project].sender != s)
        fail(fmt::format("write {} reads another sender's staging", wid));
      if (w.src_off + w.len > staging.size()) fail(fmt::format("write {} reads past staging", wid));
      src = staging.data() + w.src_off;
    } else {
      const Shard& sh = shard(s, w.src_param);
      if (w.src_off + w.len > sh.data.size())
        fail(fmt::format("write {} reads past sender {}'s shard of '{}'", wid, s,
                         plan.source_names[w.src_param]));
      src = sh.data.data() + w.src_off;
    }
    auto& d = dest[w.dest];
    if (w.dst_off + w.len > d.size()) fail(fmt::format("write {} runs past its destination", wid));
    std::memcpy(d.data() + w.dst_off, src, w.len);
    for (uint64_t i = 0; i < w.len; ++i) written[w.dest][w.dst_off + i] += 1;
    const uint32_t recv = plan.dests[w.dest].receiver;
    imms[recv].at(w.phase) += 1;
    ++res.writes;
  }

  std::string describe_byte(uint32_t di, uint64_t off) {
    const DestTensor& dt = plan.dests[di];
    const Receiver& rv = plan.receivers[dt.receiver];
    const uint64_t esz = core::dtype_size(dt.dtype);
    int64_t e = static_cast<int64_t>(off / esz);
    std::string idx;
    for (int k = dt.shape.nd - 1; k >= 0; --k) {
      idx = fmt::format("{}{}", e % dt.shape[k], idx.empty() ? "" : ", " + idx);
      e /= dt.shape[k];
    }
    std::string writers;
    for (size_t i = 0; i < plan.writes.size(); ++i) {
      const Write& w = plan.writes[i];
      if (w.dest == di && off >= w.dst_off && off < w.dst_off + w.len)
        writers +=
            fmt::format("{}write #{} from sender {}", writers.empty() ? "" : ", ", i, w.sender);
    }
    return fmt::format(
        "replica {} rank {} ({} GPU {}) tensor '{}{}' element [{}] (byte {}); written by: {}",
        rv.replica, rv.rank, rv.host, rv.gpu, plan.dest_names[dt.param],
        dt.scale ? " (scales)" : "", idx, off, writers.empty() ? "nobody" : writers);
  }

  // How often each byte of a dest must be written: once, padding never.
  std::vector<uint8_t> expected_writes(const DestTensor& dt) const {
    std::vector<uint8_t> want(dt.bytes, 1);
    const spec::DestParam& dp = in.inference.params[static_cast<size_t>(dt.param)];
    if (dp.pad_dims.empty() || dt.scale) return want;
    const Receiver& rv = plan.receivers[dt.receiver];
    const auto local = spec::dest_local(dp, in.inference.replicas[rv.replica], rv.rank);
    const uint64_t esz = core::dtype_size(dt.dtype);
    std::array<int64_t, core::kMaxDims> idx{};
    for (uint64_t e = 0; e < dt.bytes / esz; ++e) {
      int64_t rem = static_cast<int64_t>(e);
      for (int k = dt.shape.nd - 1; k >= 0; --k) {
        idx[k] = rem % dt.shape[k];
        rem /= dt.shape[k];
      }
      if (!spec::holds(local->parts[0], idx)) std::fill_n(&want[e * esz], esz, uint8_t{0});
    }
    return want;
  }

  void run() {
    shards.resize(plan.senders.size());
    for (const DestTensor& d : plan.dests) {
      dest.emplace_back(d.bytes, std::byte{0xA5});
      written.emplace_back(d.bytes, 0);
    }
    imms.assign(plan.receivers.size(), std::vector<uint32_t>(plan.phases, 0));
    for (const Sender& snd : plan.senders) {
      std::vector<std::byte> staging(snd.staging_gather + snd.staging_ring);
      if (staging.size() > plan.options.staging_watermark)
        fail(fmt::format("sender {} stages {} bytes, over the watermark {}", snd.rank,
                         staging.size(), plan.options.staging_watermark));
      for (const Task& t : snd.tasks) {
        if (t.op == Task::Op::kGather)
          run_gather(snd.rank, plan.gathers[t.index], staging);
        else if (t.op == Task::Op::kProject)
          run_project(snd.rank, t.index, staging);
        else
          run_write(snd.rank, t.index, staging);
      }
      shards[snd.rank].clear();  // keep memory to one sender's shards at a time
      tell("senders replayed", snd.rank + 1, plan.senders.size());
    }
    for (size_t r = 0; r < plan.receivers.size(); ++r)
      for (uint16_t ph = 0; ph < plan.phases; ++ph)
        if (imms[r][ph] != plan.receivers[r].expected_imms[ph])
          fail(fmt::format(
              "receiver {} (replica {} rank {}) phase {}: {} imms arrived, plan expects {}", r,
              plan.receivers[r].replica, plan.receivers[r].rank, ph, imms[r][ph],
              plan.receivers[r].expected_imms[ph]));
    for (uint32_t di = 0; di < plan.dests.size(); ++di) {
      const DestTensor& dt = plan.dests[di];
      const std::vector<uint8_t> want = expected_writes(dt);
      for (uint64_t i = 0; i < written[di].size(); ++i)
        if (written[di][i] != want[i])
          fail(fmt::format("byte written {} times{}: {}", written[di][i],
                           want[i] ? "" : " (padding, never to be written)", describe_byte(di, i)));
      const auto ref = reference_tensor(in, dt, plan.receivers[dt.receiver], step);
      if (ref.size() != dest[di].size()) fail(fmt::format("tensor {} has the wrong size", di));
      const uint64_t esz = core::dtype_size(dt.dtype);
      for (uint64_t i = 0; i < ref.size(); ++i)
        if (want[i] && ref[i] != dest[di][i]) {
          const uint64_t e0 = i / esz * esz;
          std::string exp, got;
          for (uint64_t k = 0; k < esz; ++k) {
            exp += fmt::format("{:02x}", static_cast<unsigned>(ref[e0 + esz - 1 - k]));
            got += fmt::format("{:02x}", static_cast<unsigned>(dest[di][e0 + esz - 1 - k]));
          }
          fail(fmt::format("mismatch at {}: expected 0x{} ({}), got 0x{} ({})",
                           describe_byte(di, e0), exp, core::load_as_float(dt.dtype, &ref[e0]), got,
                           core::load_as_float(dt.dtype, &dest[di][e0])));
        }
      res.bytes_checked += ref.size();
      ++res.tensors;
      tell("tensors checked against the reference", di + 1, plan.dests.size());
    }
  }
};

}  // namespace

Result<VerifyResult> verify_plan(const spec::Inputs& in, const Plan& plan, uint64_t step,
                                 const VerifyProgress& progress) {
  if (plan.inputs_digest != digest_inputs(in))
    return invalid(
        "plan was made from other inputs (digest {}, these inputs give {}); re-plan, or "
        "pass the same specs and --scale",
        plan.inputs_digest, digest_inputs(in));
  if (plan.senders.size() != static_cast<size_t>(in.trainer.mesh.size()))
    return invalid("plan has {} senders, trainer mesh has {}", plan.senders.size(),
                   in.trainer.mesh.size());
  if (Status st = check_plan(in, plan); !st) return st;  // nothing out of range is replayed
  Replayer rp{in, plan, step, {}, {}, {}, {}, {}, progress};
  try {
    rp.run();
  } catch (const std::exception& e) {
    return Status(Code::kInternal, fmt::format("verify failed: {}", e.what()));
  }
  return rp.res;
}

}  // namespace weightcast::plan
