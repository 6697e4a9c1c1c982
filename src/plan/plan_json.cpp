// Plan serialisation. Tables are arrays of rows with a documented column order; boxes are flat
// [lo0, hi0, lo1, hi1, ...]; a sender's task list is flat [op, index, op, index, ...].
#include "weightcast/plan/plan_json.h"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "weightcast/plan/check.h"

namespace weightcast::plan {

using nlohmann::json;

namespace {

void put_box(fmt::memory_buffer& o, const core::Box& b) {
  o.push_back('[');
  for (int i = 0; i < b.nd; ++i)
    fmt::format_to(std::back_inserter(o), "{}{},{}", i ? "," : "", b.lo[i], b.hi[i]);
  o.push_back(']');
}

void put_shape(fmt::memory_buffer& o, const core::Shape& s) {
  o.push_back('[');
  for (int i = 0; i < s.nd; ++i)
    fmt::format_to(std::back_inserter(o), "{}{}", i ? "," : "", s.d[i]);
  o.push_back(']');
}

template <typename T>
void put_list(fmt::memory_buffer& o, const std::vector<T>& v) {
  o.push_back('[');
  for (size_t i = 0; i < v.size(); ++i)
    fmt::format_to(std::back_inserter(o), "{}{}", i ? "," : "", v[i]);
  o.push_back(']');
}

std::string quoted(const std::string& s) { return json(s).dump(); }

}  // namespace

std::string to_json(const Plan& p, const std::string& extra) {
  fmt::memory_buffer o;
  auto out = std::back_inserter(o);
  fmt::format_to(
      out, "{{\n\"format\": \"{}\",\n\"inputs_digest\": {},\n\"scale\": {},\n\"phases\": {},\n",
      Plan::kFormat, quoted(p.inputs_digest), p.scale, p.phases);
  fmt::format_to(out,
                 "\"options\": {{\"max_write_bytes\": {}, \"staging_watermark\": {}, "
                 "\"intra_domain_gathers_only\": {}, \"write_cost_us\": {}, "
                 "\"gather_cost_us\": {}, \"ipc_links\": {}, \"hybrid_links\": {}, "
                 "\"nccl_gathers\": {}}},\n",
                 p.options.max_write_bytes, p.options.staging_watermark,
                 p.options.intra_domain_gathers_only, p.options.write_cost_us,
                 p.options.gather_cost_us, p.options.ipc_links, p.options.hybrid_links,
                 p.options.nccl_gathers);
  if (!extra.empty()) fmt::format_to(out, "{},\n", extra);
  if (!p.part_role.empty()) {
    fmt::format_to(out,
                   "\"part\": {{\"role\": {}, \"rank\": {}, \"dest_ids\": ", quoted(p.part_role),
                   p.part_rank);
    put_list(o, p.dest_ids);
    fmt::format_to(out, "}},\n");
  }
  auto names = [&](const char* key, const std::vector<std::string>& v) {
    fmt::format_to(out, "\"{}\": [", key);
    for (size_t i = 0; i < v.size(); ++i) fmt::format_to(out, "{}{}", i ? "," : "", quoted(v[i]));
    fmt::format_to(out, "],\n");
  };
  names("source_names", p.source_names);
  names("dest_names", p.dest_names);
  fmt::format_to(out, "\"dests\": [");
  for (size_t i = 0; i < p.dests.size(); ++i) {
    const DestTensor& d = p.dests[i];
    fmt::format_to(out, "{}\n [{},{},{},\"{}\",", i ? "," : "", d.receiver, d.param,
                   d.scale ? 1 : 0, core::dtype_name(d.dtype));
    put_shape(o, d.shape);
    fmt::format_to(out, ",{}]", d.bytes);
  }
  fmt::format_to(out, "],\n\"senders\": [");
  for (size_t i = 0; i < p.senders.size(); ++i) {
    const Sender& s = p.senders[i];
    fmt::format_to(
        out,
        "{}\n {{\"rank\": {}, \"host\": {}, \"gpu\": {}, \"nics\": {}, \"nic_gbps\": {}, "
        "\"nvlink_gbps\": {}, \"staging_gather\": {}, \"staging_ring\": {}, "
        "\"bytes_out\": {}, \"gather_bytes_in\": {}, \"nic_bytes\": ",
        i ? "," : "", s.rank, quoted(s.host), s.gpu, s.nics, s.nic_gbps, s.nvlink_gbps,
        s.staging_gather, s.staging_ring, s.bytes_out, s.gather_bytes_in);
    put_list(o, s.nic_bytes);
    fmt::format_to(out, ", \"tasks\": [");
    for (size_t t = 0; t < s.tasks.size(); ++t)
      fmt::format_to(out, "{}{},{}", t ? "," : "", static_cast<int>(s.tasks[t].op),
                     s.tasks[t].index);
    fmt::format_to(out, "]}}");
  }
  fmt::format_to(out, "],\n\"receivers\": [");
  for (size_t i = 0; i < p.receivers.size(); ++i) {
    const Receiver& r = p.receivers[i];
    fmt::format_to(out,
                   "{}\n {{\"replica\": {}, \"rank\": {}, \"host\": {}, \"gpu\": {}, \"nics\": {}, "
                   "\"nic_gbps\": {}, \"bytes_in\": {}, \"nic_bytes\": ",
                   i ? "," : "", r.replica, r.rank, quoted(r.host), r.gpu, r.nics, r.nic_gbps,
                   r.bytes_in);
    put_list(o, r.nic_bytes);
    fmt::format_to(out, ", \"expected_imms\": ");
    put_list(o, r.expected_imms);
    fmt::format_to(out, "}}");
  }
  fmt::format_to(out, "],\n\"gathers\": [");
  for (size_t i = 0; i < p.gathers.size(); ++i) {
    const Gather& g = p.gathers[i];
    fmt::format_to(out, "{}\n [{},{},", i ? "," : "", g.phase, g.param);
    put_box(o, g.box);
    fmt::format_to(out, ",{},[", g.root);
    for (size_t k = 0; k < g.pieces.size(); ++k) {
      fmt::format_to(out, "{}[{},", k ? "," : "", g.pieces[k].rank);
      put_box(o, g.pieces[k].box);
      o.push_back(']');
    }
    fmt::format_to(out, "],{},{},{}]", g.cross_domain ? 1 : 0, g.bytes, g.root_off);
  }
  fmt::format_to(out, "],\n\"projects\": [");
  for (size_t i = 0; i < p.projects.size(); ++i) {
    const Project& pr = p.projects[i];
    fmt::format_to(out, "{}\n [{},{},{},{},", i ? "," : "", pr.sender, pr.dest, pr.phase,
                   static_cast<int>(pr.kind));
    put_box(o, pr.box);
    o.push_back(',');
    o.push_back('[');
    for (size_t k = 0; k < pr.inputs.size(); ++k) {
      fmt::format_to(out, "{}[{},", k ? "," : "", pr.inputs[k].part);
      put_box(o, pr.inputs[k].src);
      fmt::format_to(out, ",{}]", pr.inputs[k].gather);
    }
    fmt::format_to(out, "],{},{},{},", pr.staging_off, pr.out_bytes, pr.scale_dest);
    put_box(o, pr.scale_box);
    fmt::format_to(out, ",{}]", pr.scale_off);
  }
  fmt::format_to(out, "],\n\"writes\": [");
  for (size_t i = 0; i < p.writes.size(); ++i) {
    const Write& w = p.writes[i];
    fmt::format_to(out, "{}\n [{},{},{},{},{},{},{},{},{},{}]", i ? "," : "", w.sender, w.dest,
                   w.project, w.src_param, w.phase, w.nic, w.dst_nic, w.src_off, w.dst_off, w.len);
  }
  fmt::format_to(out, "]\n}}\n");
  return fmt::to_string(o);
}

Status save_json(const Plan& plan, const std::string& path, const std::string& extra) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Status(Code::kSystem, fmt::format("{}: cannot open for writing", tmp));
    const std::string s = to_json(plan, extra);
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
    if (!f.flush()) return Status(Code::kSystem, fmt::format("{}: write failed", tmp));
  }
  // Rename so a reader never sees a half-written plan.
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return Status(Code::kSystem, fmt::format("rename({}, {}) failed", tmp, path));
  return Status::ok();
}

namespace {

struct LoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw LoadError(fmt::format("plan.{}: {}", path, what));
}

uint64_t u(const json& j, const std::string& path, uint64_t max = UINT64_MAX) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0))
    bad(path, "expected a non-negative integer");
  const auto v = j.get<uint64_t>();
  if (v > max) bad(path, fmt::format("{} out of range (max {})", v, max));
  return v;
}

uint64_t idx(const json& j, const std::string& path, size_t n) {
  const uint64_t v = u(j, path);
  if (v >= n) bad(path, fmt::format("index {} out of range (table has {} rows)", v, n));
  return v;
}

int64_t i64(const json& j, const std::string& path, int64_t min, int64_t max) {
  if (!j.is_number_integer()) bad(path, "expected an integer");
  const auto v = j.get<int64_t>();
  if (v < min || v > max) bad(path, fmt::format("{} out of range [{}, {}]", v, min, max));
  return v;
}

const json& at(const json& j, const char* key, const std::string& path) {
  if (!j.is_object() || !j.contains(key)) bad(path + "." + key, "missing");
  return j[key];
}

const json& arr(const json& j, const std::string& path, size_t n = SIZE_MAX) {
  if (!j.is_array()) bad(path, "expected an array");
  if (n != SIZE_MAX && j.size() != n)
    bad(path, fmt::format("expected {} columns, got {}", n, j.size()));
  return j;
}

core::Box box(const json& j, const std::string& path) {
  arr(j, path);
  if (j.size() % 2 || j.size() > 2 * core::kMaxDims) bad(path, "bad box");
  core::Box b;
  b.nd = static_cast<int>(j.size() / 2);
  for (int i = 0; i < b.nd; ++i) {
    b.lo[i] = i64(j[2 * i], path, 0, INT64_MAX);
    b.hi[i] = i64(j[2 * i + 1], path, b.lo[i], INT64_MAX);
  }
  return b;
}

std::vector<uint64_t> ulist(const json& j, const std::string& path) {
  std::vector<uint64_t> v;
  for (const auto& e : arr(j, path)) v.push_back(u(e, path));
  return v;
}

}  // namespace

Result<Plan> from_json(const std::string& text) {
  Plan p;
  try {
    const json j = json::parse(text);
    const std::string fmt_s = at(j, "format", "").is_string() ? j["format"].get<std::string>() : "";
    if (fmt_s != Plan::kFormat)
      bad("format", fmt::format("expected \"{}\", got {}", Plan::kFormat, j["format"].dump()));
    p.inputs_digest = at(j, "inputs_digest", "").get<std::string>();
    p.scale = i64(at(j, "scale", ""), "scale", 1, 1 << 20);
    p.phases = static_cast<uint16_t>(u(at(j, "phases", ""), "phases", 65535));
    const json& o = at(j, "options", "");
    p.options.max_write_bytes = u(at(o, "max_write_bytes", "options"), "options.max_write_bytes");
    p.options.staging_watermark =
        u(at(o, "staging_watermark", "options"), "options.staging_watermark");
    p.options.intra_domain_gathers_only = at(o, "intra_domain_gathers_only", "options").get<bool>();
    if (o.contains("ipc_links")) {  // (older plans lack it: NIC links)
      if (!o["ipc_links"].is_boolean()) bad("options.ipc_links", "expected true or false");
      p.options.ipc_links = o["ipc_links"].get<bool>();
    }
    for (auto [key, field] : {std::pair{"hybrid_links", &p.options.hybrid_links},
                              std::pair{"nccl_gathers", &p.options.nccl_gathers}}) {
      if (!o.contains(key)) continue;  // (older plans lack them)
      if (!o[key].is_boolean()) bad(std::string("options.") + key, "expected true or false");
      *field = o[key].get<bool>();
    }
    // The packing trade's costs: what the plan was made with (plans saved before they were
    // recorded lack them; they do not change how a plan runs).
    for (auto [key, field] : {std::pair{"write_cost_us", &p.options.write_cost_us},
                              std::pair{"gather_cost_us", &p.options.gather_cost_us}}) {
      if (!o.contains(key)) continue;
      if (!o[key].is_number() || !(o[key].get<double>() >= 0))
        bad(std::string("options.") + key, "expected a number >= 0, got " + o[key].dump());
      *field = o[key].get<double>();
    }
    if (j.contains("part")) {
      const json& pt = j["part"];
      p.part_role = at(pt, "role", "part").is_string() ? pt["role"].get<std::string>() : "";
      if (p.part_role != "trainer" && p.part_role != "inference")
        bad("part.role", "expected \"trainer\" or \"inference\"");
      p.part_rank = static_cast<uint32_t>(u(at(pt, "rank", "part"), "part.rank", UINT32_MAX));
      for (const auto& d : arr(at(pt, "dest_ids", "part"), "part.dest_ids"))
        p.dest_ids.push_back(static_cast<uint32_t>(u(d, "part.dest_ids", UINT32_MAX)));
    }
    for (const auto& s : arr(at(j, "source_names", ""), "source_names"))
      p.source_names.push_back(s.get<std::string>());
    for (const auto& s : arr(at(j, "dest_names", ""), "dest_names"))
      p.dest_names.push_back(s.get<std::string>());
    const json& rs = arr(at(j, "receivers", ""), "receivers");
    for (size_t i = 0; i < rs.size(); ++i) {
      const std::string path = fmt::format("receivers[{}]", i);
      Receiver r;
      r.replica =
          static_cast<uint32_t>(u(at(rs[i], "replica", path), path + ".replica", UINT32_MAX));
      r.rank = static_cast<uint32_t>(u(at(rs[i], "rank", path), path + ".rank", UINT32_MAX));
      r.host = at(rs[i], "host", path).get<std::string>();
      r.gpu = static_cast<int>(u(at(rs[i], "gpu", path), path + ".gpu", 1023));
      r.nics = static_cast<int>(u(at(rs[i], "nics", path), path + ".nics", 255));
      r.nic_gbps = at(rs[i], "nic_gbps", path).get<double>();
      r.bytes_in = u(at(rs[i], "bytes_in", path), path + ".bytes_in");
      r.nic_bytes = ulist(at(rs[i], "nic_bytes", path), path + ".nic_bytes");
      for (uint64_t v : ulist(at(rs[i], "expected_imms", path), path + ".expected_imms"))
        r.expected_imms.push_back(static_cast<uint32_t>(v));
      if (r.expected_imms.size() != p.phases)
        bad(path + ".expected_imms", "expected one count per phase");
      p.receivers.push_back(std::move(r));
    }
    const json& ds = arr(at(j, "dests", ""), "dests");
    for (size_t i = 0; i < ds.size(); ++i) {
      const std::string path = fmt::format("dests[{}]", i);
      const json& r = arr(ds[i], path, 6);
      DestTensor d;
      d.receiver = static_cast<uint32_t>(idx(r[0], path, p.receivers.size()));
      d.param = static_cast<int32_t>(idx(r[1], path, p.dest_names.size()));
      d.scale = u(r[2], path, 1) != 0;
      auto dt = core::parse_dtype(r[3].get<std::string>());
      if (!dt) bad(path, "unknown dtype");
      d.dtype = *dt;
      if (arr(r[4], path).size() > core::kMaxDims)
        bad(path, fmt::format("more than {} dims", core::kMaxDims));
      for (const auto& e : r[4]) d.shape.d[d.shape.nd++] = i64(e, path, 0, INT64_MAX);
      d.bytes = u(r[5], path);  // checked against the shape by check_plan, overflow-safe
      p.dests.push_back(d);
    }
    const json& gs = arr(at(j, "gathers", ""), "gathers");
    for (size_t i = 0; i < gs.size(); ++i) {
      const std::string path = fmt::format("gathers[{}]", i);
      const json& r = arr(gs[i], path, 8);
      Gather g;
      g.phase = static_cast<uint16_t>(u(r[0], path, p.phases - 1));
      g.param = static_cast<int32_t>(idx(r[1], path, p.source_names.size()));
      g.box = box(r[2], path);
      g.root = static_cast<uint32_t>(u(r[3], path, UINT32_MAX));
      for (const auto& pc : arr(r[4], path))
        g.pieces.push_back(
            {static_cast<uint32_t>(u(arr(pc, path, 2)[0], path, UINT32_MAX)), box(pc[1], path)});
      g.cross_domain = u(r[5], path, 1) != 0;
      g.bytes = u(r[6], path);
      g.root_off = u(r[7], path);
      p.gathers.push_back(std::move(g));
    }
    const json& ss = arr(at(j, "senders", ""), "senders");
    for (size_t i = 0; i < ss.size(); ++i) {
      const std::string path = fmt::format("senders[{}]", i);
      const json& r = ss[i];
      Sender s;
      s.rank = static_cast<uint32_t>(u(at(r, "rank", path), path + ".rank", UINT32_MAX));
      if (s.rank != i) bad(path + ".rank", "senders must be listed in rank order");
      s.host = at(r, "host", path).get<std::string>();
      s.gpu = static_cast<int>(u(at(r, "gpu", path), path + ".gpu", 1023));
      s.nics = static_cast<int>(u(at(r, "nics", path), path + ".nics", 255));
      s.nic_gbps = at(r, "nic_gbps", path).get<double>();
      s.nvlink_gbps = at(r, "nvlink_gbps", path).get<double>();
      s.staging_gather = u(at(r, "staging_gather", path), path);
      s.staging_ring = u(at(r, "staging_ring", path), path);
      s.bytes_out = u(at(r, "bytes_out", path), path);
      s.gather_bytes_in = u(at(r, "gather_bytes_in", path), path);
      s.nic_bytes = ulist(at(r, "nic_bytes", path), path + ".nic_bytes");
      const json& t = arr(at(r, "tasks", path), path + ".tasks");
      if (t.size() % 2) bad(path + ".tasks", "expected [op, index] pairs");
      for (size_t k = 0; k < t.size(); k += 2)
        s.tasks.push_back({static_cast<Task::Op>(u(t[k], path + ".tasks", 2)),
                           static_cast<uint32_t>(u(t[k + 1], path + ".tasks", UINT32_MAX))});
      p.senders.push_back(std::move(s));
    }
    const json& ps = arr(at(j, "projects", ""), "projects");
    for (size_t i = 0; i < ps.size(); ++i) {
      const std::string path = fmt::format("projects[{}]", i);
      const json& r = arr(ps[i], path, 11);
      Project pr;
      pr.sender = static_cast<uint32_t>(idx(r[0], path, p.senders.size()));
      pr.dest = static_cast<uint32_t>(idx(r[1], path, p.dests.size()));
      pr.phase = static_cast<uint16_t>(u(r[2], path, p.phases - 1));
      pr.kind = static_cast<Project::Kind>(u(r[3], path, 2));
      pr.box = box(r[4], path);
      for (const auto& in : arr(r[5], path)) {
        arr(in, path, 3);
        pr.inputs.push_back({static_cast<uint32_t>(u(in[0], path, 255)), box(in[1], path),
                             static_cast<int32_t>(i64(
                                 in[2], path, -1, static_cast<int64_t>(p.gathers.size()) - 1))});
      }
      pr.staging_off = u(r[6], path);
      pr.out_bytes = u(r[7], path);
      pr.scale_dest =
          static_cast<int32_t>(i64(r[8], path, -1, static_cast<int64_t>(p.dests.size()) - 1));
      pr.scale_box = box(r[9], path);
      pr.scale_off = u(r[10], path);
      p.projects.push_back(std::move(pr));
    }
    const json& ws = arr(at(j, "writes", ""), "writes");
    p.writes.reserve(ws.size());
    for (size_t i = 0; i < ws.size(); ++i) {
      const std::string path = fmt::format("writes[{}]", i);
      const json& r = arr(ws[i], path, 10);
      Write w;
      w.sender = static_cast<uint32_t>(idx(r[0], path, p.senders.size()));
      w.dest = static_cast<uint32_t>(idx(r[1], path, p.dests.size()));
      w.project =
          static_cast<int32_t>(i64(r[2], path, -1, static_cast<int64_t>(p.projects.size()) - 1));
      w.src_param = static_cast<int32_t>(
          i64(r[3], path, -1, static_cast<int64_t>(p.source_names.size()) - 1));
      w.phase = static_cast<uint16_t>(u(r[4], path, p.phases - 1));
      w.nic = static_cast<uint8_t>(u(r[5], path, 255));
      w.dst_nic = static_cast<uint8_t>(u(r[6], path, 255));
      w.src_off = u(r[7], path);
      w.dst_off = u(r[8], path);
      w.len = u(r[9], path);
      // An inference rank's part keeps no source side; every other write reads exactly one.
      const bool sourceless = p.part_role == "inference" && w.project < 0 && w.src_param < 0;
      if ((w.project < 0) == (w.src_param < 0) && !sourceless)
        bad(path, "a write reads either staging or a source shard");
      if (w.dst_off + w.len > p.dests[w.dest].bytes)
        bad(path, "write runs past its destination tensor");
      p.writes.push_back(w);
    }
    for (const Gather& g : p.gathers)
      if (g.root >= p.senders.size()) bad("gathers", "root out of range");
    if (!p.dest_ids.empty() && p.dest_ids.size() != p.dests.size())
      bad("part.dest_ids", fmt::format("{} ids for {} dests", p.dest_ids.size(), p.dests.size()));
    if (p.part_role == "trainer" && p.part_rank >= p.senders.size())
      bad("part.rank", "no such trainer rank");
    if (p.part_role == "inference" && p.part_rank >= p.receivers.size())
      bad("part.rank", "no such inference rank");
    for (const Sender& s : p.senders)
      for (const Task& t : s.tasks) {
        const size_t n = t.op == Task::Op::kGather    ? p.gathers.size()
                         : t.op == Task::Op::kProject ? p.projects.size()
                                                      : p.writes.size();
        if (t.index >= n) bad(fmt::format("senders[{}].tasks", s.rank), "task index out of range");
      }
  } catch (const LoadError& e) {
    return Status(Code::kInvalidArgument, e.what());
  } catch (const std::bad_alloc&) {
    return Status(Code::kInvalidArgument, "plan: too large to load");
  } catch (const json::exception& e) {
    return Status(Code::kInvalidArgument, fmt::format("plan: {}", e.what()));
  }
  if (Status st = check_plan(p); !st) return st;
  return p;
}

Result<Plan> load_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status(Code::kInvalidArgument, fmt::format("{}: cannot open plan", path));
  std::stringstream ss;
  ss << f.rdbuf();
  auto r = from_json(ss.str());
  if (!r) return Status(r.status().code(), fmt::format("{}: {}", path, r.status().message()));
  return r;
}

}  // namespace weightcast::plan
