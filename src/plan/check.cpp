// Plan checks (check.h): structural ones first, then against the specs.
#include "weightcast/plan/check.h"

#include <fmt/format.h>

#include <optional>

#include "weightcast/spec/layout.h"

namespace weightcast::plan {

namespace {

using core::Box;
using core::Shape;

constexpr uint64_t kMaxBytes = uint64_t{1} << 62;  // no tensor or staging area is larger

inline bool within(uint64_t off, uint64_t len, uint64_t size) {
  return len <= size && off <= size - len;
}

// Elements of a box or shape, or nullopt past kMaxBytes (no int64 overflow on the way).
std::optional<uint64_t> count(const int64_t* ext, int nd) {
  uint64_t n = 1;
  for (int i = 0; i < nd; ++i) {
    if (ext[i] < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(ext[i]), &n) || n > kMaxBytes)
      return std::nullopt;
  }
  return n;
}
std::optional<uint64_t> count(const Shape& s) { return count(s.d.data(), s.nd); }
std::optional<uint64_t> count(const Box& b) {
  std::array<int64_t, core::kMaxDims> e{};
  for (int i = 0; i < b.nd; ++i) {
    if (b.hi[i] < b.lo[i] || b.lo[i] < 0) return std::nullopt;
    e[i] = b.hi[i] - b.lo[i];
  }
  return count(e.data(), b.nd);
}
std::optional<uint64_t> bytes_of(std::optional<uint64_t> n, size_t esz) {
  if (!n || *n > kMaxBytes / esz) return std::nullopt;
  return *n * esz;
}
bool inside(const Box& b, const Shape& s) {
  if (b.nd != s.nd) return false;
  for (int i = 0; i < b.nd; ++i)
    if (b.lo[i] < 0 || b.lo[i] > b.hi[i] || b.hi[i] > s[i]) return false;
  return true;
}

struct Checker {
  const Plan& p;
  std::string err;

  template <typename... A>
  bool bad(const std::string& path, fmt::format_string<A...> f, A&&... a) {
    if (err.empty()) err = path + ": " + fmt::format(f, std::forward<A>(a)...);
    return false;
  }

  bool tables() {
    if (p.phases < 1 || p.phases > 254)
      return bad("phases", "{} phases; a plan has 1 to 254 (immediates keep 254 and 255)",
                 p.phases);
    for (size_t i = 0; i < p.senders.size(); ++i) {
      const Sender& s = p.senders[i];
      const std::string path = fmt::format("senders[{}]", i);
      if (s.nics < 1) return bad(path + ".nics", "a sender has at least one NIC, got {}", s.nics);
      if (s.nic_bytes.size() != static_cast<size_t>(s.nics))
        return bad(path + ".nic_bytes", "{} entries for {} NICs", s.nic_bytes.size(), s.nics);
      if (s.staging_gather > kMaxBytes || s.staging_ring > kMaxBytes ||
          s.staging_gather + s.staging_ring > p.options.staging_watermark)
        return bad(path, "stages {} + {} bytes, over the watermark {}", s.staging_gather,
                   s.staging_ring, p.options.staging_watermark);
    }
    for (size_t i = 0; i < p.receivers.size(); ++i) {
      const Receiver& r = p.receivers[i];
      const std::string path = fmt::format("receivers[{}]", i);
      if (r.nics < 1) return bad(path + ".nics", "a receiver has at least one NIC, got {}", r.nics);
      if (r.nic_bytes.size() != static_cast<size_t>(r.nics))
        return bad(path + ".nic_bytes", "{} entries for {} NICs", r.nic_bytes.size(), r.nics);
      if (r.expected_imms.size() != p.phases)
        return bad(path + ".expected_imms", "expected one count per phase");
    }
    for (size_t i = 0; i < p.dests.size(); ++i) {
      const DestTensor& d = p.dests[i];
      const std::string path = fmt::format("dests[{}]", i);
      if (d.receiver >= p.receivers.size()) return bad(path, "no receiver {}", d.receiver);
      if (d.param < 0 || static_cast<size_t>(d.param) >= p.dest_names.size())
        return bad(path, "no inference param {}", d.param);
      const auto b = bytes_of(count(d.shape), core::dtype_size(d.dtype));
      if (!b || *b != d.bytes)
        return bad(path, "{} bytes do not match shape {} of {}", d.bytes, d.shape.str(),
                   core::dtype_name(d.dtype));
      if (d.scale && d.dtype != core::DType::kFP32)
        return bad(path, "a scale tensor is FP32, not {}", core::dtype_name(d.dtype));
    }
    return true;
  }

  bool gathers() {
    for (size_t i = 0; i < p.gathers.size(); ++i) {
      const Gather& g = p.gathers[i];
      const std::string path = fmt::format("gathers[{}]", i);
      if (g.phase == 0 || g.phase >= p.phases)
        return bad(path, "gathers run in phases 1 to {}, not {}", p.phases - 1, g.phase);
      if (g.root >= p.senders.size()) return bad(path, "root {} is not a trainer rank", g.root);
      if (g.param < 0 || static_cast<size_t>(g.param) >= p.source_names.size())
        return bad(path, "no trainer param {}", g.param);
      const auto n = count(g.box);
      if (g.box.nd < 1 || !n) return bad(path, "bad box {}", g.box.str());
      if (!within(g.root_off, *n, p.senders[g.root].staging_gather))  // bytes >= elements
        return bad(path, "gather buffer at {} runs past root {}'s gather area ({} bytes)",
                   g.root_off, g.root, p.senders[g.root].staging_gather);
      uint64_t covered = 0;
      for (size_t k = 0; k < g.pieces.size(); ++k) {
        const Gather::Piece& pc = g.pieces[k];
        if (pc.rank >= p.senders.size())
          return bad(fmt::format("{}.pieces[{}]", path, k), "rank {} is not a trainer rank",
                     pc.rank);
        if (pc.box.nd != g.box.nd || !g.box.contains(pc.box) || !count(pc.box))
          return bad(fmt::format("{}.pieces[{}]", path, k), "box {} is not inside {}", pc.box.str(),
                     g.box.str());
        covered += *count(pc.box);
      }
      if (covered != *n) return bad(path, "pieces cover {} of {} elements", covered, *n);
    }
    return true;
  }

  bool projects() {
    for (size_t i = 0; i < p.projects.size(); ++i) {
      const Project& q = p.projects[i];
      const std::string path = fmt::format("projects[{}]", i);
      const DestTensor& d = p.dests[q.dest];
      if (q.phase >= p.phases) return bad(path, "phase {} of {}", q.phase, p.phases);
      if (d.scale) return bad(path, "projects into dests[{}], a scale tensor", q.dest);
      if (!inside(q.box, d.shape))
        return bad(path, "box {} is not inside dests[{}] ({})", q.box.str(), q.dest, d.shape.str());
      const bool fp8 = d.dtype == core::DType::kFP8E4M3 || d.dtype == core::DType::kFP8E5M2;
      if (q.kind == Project::Kind::kQuant && !fp8)
        return bad(path, "a quantizing projection into {} dests[{}]", core::dtype_name(d.dtype),
                   q.dest);
      const auto out = bytes_of(count(q.box), core::dtype_size(d.dtype));
      if (!out || *out != q.out_bytes || q.out_bytes == 0)
        return bad(path, "out_bytes {} for box {} of {}", q.out_bytes, q.box.str(),
                   core::dtype_name(d.dtype));
      const Sender& s = p.senders[q.sender];
      const uint64_t ring_end = s.staging_gather + s.staging_ring;
      if (q.staging_off < s.staging_gather || !within(q.staging_off, q.out_bytes, ring_end))
        return bad(path, "staging [{}, +{}) is outside sender {}'s ring [{}, {})", q.staging_off,
                   q.out_bytes, q.sender, s.staging_gather, ring_end);
      if (q.kind == Project::Kind::kQuant) {
        if (q.scale_dest < 0) return bad(path, "a quantizing projection needs its scale tensor");
        const DestTensor& sd = p.dests[static_cast<size_t>(q.scale_dest)];
        if (!sd.scale || sd.receiver != d.receiver || sd.param != d.param)
          return bad(path, "scale_dest {} is not the scale tensor of dests[{}]", q.scale_dest,
                     q.dest);
        const auto sb = bytes_of(count(q.scale_box), 4);
        if (!inside(q.scale_box, sd.shape) || !sb || d.shape.nd < 2)
          return bad(path, "scale box {} is not inside dests[{}] ({})", q.scale_box.str(),
                     q.scale_dest, sd.shape.str());
        if (q.scale_off != q.staging_off + q.out_bytes || !within(q.scale_off, *sb, ring_end))
          return bad(path, "scales at {} (+{}) do not follow the values inside the ring",
                     q.scale_off, *sb);
      } else if (q.scale_dest >= 0) {
        return bad(path, "only a quantizing projection has a scale tensor");
      }
      if (q.inputs.empty()) return bad(path, "no inputs");
      for (size_t k = 0; k < q.inputs.size(); ++k) {
        const Project::Input& in = q.inputs[k];
        const std::string ip = fmt::format("{}.inputs[{}]", path, k);
        if (in.src.nd != q.box.nd || !count(in.src)) return bad(ip, "bad box {}", in.src.str());
        if (in.gather >= 0 && p.gathers[static_cast<size_t>(in.gather)].root != q.sender)
          return bad(ip, "gathers[{}] has another root than sender {}", in.gather, q.sender);
      }
    }
    return true;
  }

  bool writes() {
    std::vector<std::vector<uint32_t>> imms(p.receivers.size(), std::vector<uint32_t>(p.phases));
    for (size_t i = 0; i < p.writes.size(); ++i) {
      const Write& w = p.writes[i];
      const std::string path = fmt::format("writes[{}]", i);
      const DestTensor& d = p.dests[w.dest];
      if (!within(w.dst_off, w.len, d.bytes))
        return bad(path, "[{}, +{}) runs past dests[{}] ({} bytes)", w.dst_off, w.len, w.dest,
                   d.bytes);
      if (w.nic >= p.senders[w.sender].nics)
        return bad(path, "NIC {} of sender {}, which has {}", w.nic, w.sender,
                   p.senders[w.sender].nics);
      if (w.dst_nic >= p.receivers[d.receiver].nics)
        return bad(path, "NIC {} of receiver {}, which has {}", w.dst_nic, d.receiver,
                   p.receivers[d.receiver].nics);
      if (w.project >= 0) {
        const Project& q = p.projects[static_cast<size_t>(w.project)];
        if (q.sender != w.sender) return bad(path, "reads sender {}'s staging", q.sender);
        // One projection may feed every tensor holding the same values (replicas, params made
        // from the same source): the bytes must be of the dest's kind, values or scales.
        const bool scales = d.scale;
        const DestTensor& made =
            p.dests[scales ? static_cast<size_t>(std::max(q.scale_dest, 0)) : q.dest];
        if ((scales && q.scale_dest < 0) || made.dtype != d.dtype)
          return bad(path, "writes dests[{}] from projects[{}], which makes another tensor", w.dest,
                     w.project);
        const uint64_t lo = scales ? q.scale_off : q.staging_off;
        // (projects() proved the scales follow the values inside the ring)
        const uint64_t n = scales ? *bytes_of(count(q.scale_box), 4) : q.out_bytes;
        if (w.src_off < lo || !within(w.src_off - lo, w.len, n))
          return bad(path, "reads [{}, +{}) outside projects[{}]'s output [{}, +{})", w.src_off,
                     w.len, w.project, lo, n);
      }
      if (w.phase >= p.phases) return bad(path, "phase {} of {}", w.phase, p.phases);
      ++imms[d.receiver][w.phase];
    }
    // Exact counts where the plan holds every write of a receiver.
    for (size_t r = 0; r < p.receivers.size(); ++r) {
      if (p.part_role == "trainer" || (p.part_role == "inference" && r != p.part_rank)) continue;
      for (uint16_t ph = 0; ph < p.phases; ++ph)
        if (imms[r][ph] != p.receivers[r].expected_imms[ph])
          return bad(fmt::format("receivers[{}].expected_imms[{}]", r, ph),
                     "{} writes reach it, the plan expects {}", imms[r][ph],
                     p.receivers[r].expected_imms[ph]);
    }
    return true;
  }

  bool tasks() {
    for (size_t i = 0; i < p.senders.size(); ++i)
      for (size_t k = 0; k < p.senders[i].tasks.size(); ++k) {
        const Task& t = p.senders[i].tasks[k];
        const std::string path = fmt::format("senders[{}].tasks[{}]", i, k);
        if (t.op == Task::Op::kProject && p.projects[t.index].sender != i)
          return bad(path, "projects[{}] belongs to sender {}", t.index,
                     p.projects[t.index].sender);
        if (t.op == Task::Op::kWrite && p.writes[t.index].sender != i)
          return bad(path, "writes[{}] belongs to sender {}", t.index, p.writes[t.index].sender);
        if (t.op == Task::Op::kGather) {
          const Gather& g = p.gathers[t.index];
          bool member = g.root == i;
          for (const auto& pc : g.pieces) member = member || pc.rank == i;
          if (!member) return bad(path, "sender {} takes no part in gathers[{}]", i, t.index);
        }
      }
    return true;
  }
};

}  // namespace

Status check_plan(const Plan& p) {
  Checker c{p, {}};
  if (c.tables() && c.gathers() && c.projects() && c.writes() && c.tasks()) return Status::ok();
  return invalid("plan: {}", c.err);
}

Status check_plan(const spec::Inputs& in, const Plan& p) {
  if (Status s = check_plan(p); !s) return s;
  auto fail = [&](const std::string& m) { return invalid("plan: {}", m); };
  if (p.senders.size() != static_cast<size_t>(in.trainer.mesh.size()))
    return fail(fmt::format("senders: {} ranks, the trainer mesh has {}", p.senders.size(),
                            in.trainer.mesh.size()));
  if (p.source_names.size() != in.trainer.params.size())
    return fail(fmt::format("source_names: {} names, the trainer spec has {} params",
                            p.source_names.size(), in.trainer.params.size()));
  if (p.dest_names.size() != in.inference.params.size())
    return fail(fmt::format("dest_names: {} names, the inference spec has {} params",
                            p.dest_names.size(), in.inference.params.size()));
  for (size_t i = 0; i < p.source_names.size(); ++i)  // a part blanks names it does not use
    if (!p.source_names[i].empty() && p.source_names[i] != in.trainer.params[i].name)
      return fail(fmt::format("source_names[{}]: '{}', the trainer spec's is '{}'", i,
                              p.source_names[i], in.trainer.params[i].name));
  for (size_t i = 0; i < p.dest_names.size(); ++i)
    if (!p.dest_names[i].empty() && p.dest_names[i] != in.inference.params[i].name)
      return fail(fmt::format("dest_names[{}]: '{}', the inference spec's is '{}'", i,
                              p.dest_names[i], in.inference.params[i].name));
  for (size_t i = 0; i < p.receivers.size(); ++i) {
    const Receiver& r = p.receivers[i];
    if (r.replica >= in.inference.replicas.size() ||
        r.rank >= static_cast<uint64_t>(in.inference.replicas[r.replica].size()))
      return fail(fmt::format("receivers[{}]: replica {} rank {} is not in the inference spec", i,
                              r.replica, r.rank));
  }
  for (size_t i = 0; i < p.dests.size(); ++i) {
    const DestTensor& d = p.dests[i];
    const spec::DestParam& dp = in.inference.params[static_cast<size_t>(d.param)];
    const Receiver& r = p.receivers[d.receiver];
    const auto local = spec::dest_local(dp, in.inference.replicas[r.replica], r.rank);
    if (!local)
      return fail(fmt::format("dests[{}]: receiver {} holds no '{}'", i, d.receiver, dp.name));
    if (d.scale && !dp.quant)
      return fail(fmt::format("dests[{}]: '{}' is not block-quantized", i, dp.name));
    const Shape want = d.scale ? spec::scale_shape(local->shape, *dp.quant) : local->shape;
    const core::DType dt = d.scale ? core::DType::kFP32 : dp.dtype;
    if (!(d.shape == want) || d.dtype != dt)
      return fail(fmt::format("dests[{}]: {} {} for '{}'{} on receiver {}, the specs give {} {}", i,
                              d.shape.str(), core::dtype_name(d.dtype), dp.name,
                              d.scale ? " (scales)" : "", d.receiver, want.str(),
                              core::dtype_name(dt)));
  }
  auto shard = [&](uint32_t rank, int32_t param) -> std::optional<Box> {
    const spec::Param& sp = in.trainer.params[static_cast<size_t>(param)];
    return spec::local_box(sp.shape, sp.placement, in.trainer.mesh, rank);
  };
  for (size_t i = 0; i < p.writes.size(); ++i) {
    const Write& w = p.writes[i];
    if (w.project >= 0 || w.src_param < 0) continue;
    const spec::Param& sp = in.trainer.params[static_cast<size_t>(w.src_param)];
    const auto b = shard(w.sender, w.src_param);
    const uint64_t held = b ? *bytes_of(count(*b), core::dtype_size(sp.dtype)) : 0;
    if (!within(w.src_off, w.len, held))
      return fail(fmt::format("writes[{}]: reads [{}, +{}) of sender {}'s shard of '{}' ({} bytes)",
                              i, w.src_off, w.len, w.sender, sp.name, held));
  }
  for (size_t i = 0; i < p.gathers.size(); ++i) {
    const Gather& g = p.gathers[i];
    const spec::Param& sp = in.trainer.params[static_cast<size_t>(g.param)];
    if (!inside(g.box, sp.shape))
      return fail(fmt::format("gathers[{}]: box {} is not inside '{}' {}", i, g.box.str(), sp.name,
                              sp.shape.str()));
    const auto gb = bytes_of(count(g.box), core::dtype_size(sp.dtype));
    if (!within(g.root_off, *gb, p.senders[g.root].staging_gather))
      return fail(fmt::format("gathers[{}]: {} bytes at {} run past root {}'s gather area ({})", i,
                              *gb, g.root_off, g.root, p.senders[g.root].staging_gather));
    for (size_t k = 0; k < g.pieces.size(); ++k) {
      const auto b = shard(g.pieces[k].rank, g.param);
      if (!b || !b->contains(g.pieces[k].box))
        return fail(fmt::format("gathers[{}].pieces[{}]: rank {} does not hold {} of '{}'", i, k,
                                g.pieces[k].rank, g.pieces[k].box.str(), sp.name));
    }
  }
  for (size_t i = 0; i < p.projects.size(); ++i) {
    const Project& q = p.projects[i];
    const spec::DestParam& dp = in.inference.params[static_cast<size_t>(p.dests[q.dest].param)];
    for (size_t k = 0; k < q.inputs.size(); ++k) {
      const Project::Input& x = q.inputs[k];
      const std::string ip = fmt::format("projects[{}].inputs[{}]", i, k);
      if (x.part >= dp.parts.size())
        return fail(fmt::format("{}: '{}' has {} parts, not part {}", ip, dp.name, dp.parts.size(),
                                x.part));
      const spec::Param& sp = in.trainer.params[static_cast<size_t>(dp.parts[x.part].src)];
      if (!inside(x.src, sp.shape))
        return fail(fmt::format("{}: box {} is not inside '{}' {}", ip, x.src.str(), sp.name,
                                sp.shape.str()));
      if (x.gather >= 0 && p.gathers[static_cast<size_t>(x.gather)].param != dp.parts[x.part].src)
        return fail(
            fmt::format("{}: gathers[{}] brings another param than '{}'", ip, x.gather, sp.name));
      const bool same = sp.dtype == dp.dtype;
      if (q.kind == Project::Kind::kCopy && !same)
        return fail(fmt::format("projects[{}]: a copy from {} '{}' into {} '{}'", i,
                                core::dtype_name(sp.dtype), sp.name, core::dtype_name(dp.dtype),
                                dp.name));
      if (q.kind == Project::Kind::kCast && same)
        return fail(fmt::format("projects[{}]: a cast between equal dtypes ({})", i,
                                core::dtype_name(sp.dtype)));
    }
    if ((q.kind == Project::Kind::kQuant) != dp.quant.has_value())
      return fail(fmt::format("projects[{}]: kind {} for '{}', which is {}block-quantized", i,
                              static_cast<int>(q.kind), dp.name, dp.quant ? "" : "not "));
  }
  return Status::ok();
}

}  // namespace weightcast::plan
