// Trainer and inference spec parsing: meshes, devices, placements, patterns, mappings.
#include "weightcast/spec/spec_parser.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "json_reader.h"
#include "pattern.h"

namespace weightcast::spec {

using namespace detail;  // NOLINT: internal helpers of this module
using core::Shape;

namespace {

constexpr int64_t kMaxExpansion = 4'000'000;
constexpr int64_t kMaxRanks = 1 << 20;
constexpr int64_t kMaxExtent = int64_t{1} << 40;

using Dims = std::map<std::string, int64_t>;

Dims parse_dims(const json& root, const std::string& path, int64_t scale) {
  Dims dims;
  const json* d = optional(root, "dims", path);
  if (!d) return dims;
  const std::string dp = child(path, "dims");
  require_object(*d, dp);
  for (auto it = d->begin(); it != d->end(); ++it) {
    const std::string p = child(dp, it.key().c_str());
    const int64_t v = get_int(it.value(), p, 1, kMaxExtent);
    if (v % scale != 0)
      fail(p, fmt::format("{} is not divisible by --scale {}; pick a scale that divides every "
                          "named dim",
                          v, scale));
    dims[it.key()] = v / scale;
  }
  return dims;
}

// Counts a spec's parameters and bytes against ParseOptions' bounds, before anything is built.
struct Budget {
  const ParseOptions& opts;
  int64_t params = 0;
  uint64_t bytes = 0;
  // `n` more tensors of `shape` and `dt`, declared at `path`.
  void take(const std::string& path, int64_t n, const Shape& shape, core::DType dt) {
    uint64_t one = core::dtype_size(dt);
    for (int i = 0; i < shape.nd; ++i)
      if (__builtin_mul_overflow(one, static_cast<uint64_t>(shape[i]), &one) ||
          one > opts.max_bytes)
        fail(child(path, "shape"),
             fmt::format("a tensor of shape {} is larger than the spec limit of {} bytes "
                         "(ParseOptions.max_bytes)",
                         shape.str(), opts.max_bytes));
    if (n > opts.max_params - params)
      fail(path, fmt::format("{} more parameters would pass the limit of {} per spec "
                             "(ParseOptions.max_params, --max-params)",
                             n, opts.max_params));
    params += n;
    uint64_t all = 0;
    if (__builtin_mul_overflow(one, static_cast<uint64_t>(n), &all) ||
        all > opts.max_bytes - std::min(bytes, opts.max_bytes))
      fail(path, fmt::format("the spec's tensors pass the limit of {} bytes "
                             "(ParseOptions.max_bytes)",
                             opts.max_bytes));
    bytes += all;
  }
};

// A shape entry: an integer, a dim name, or a product such as "2*inter".
int64_t parse_extent(const json& j, const Dims& dims, const std::string& path) {
  if (j.is_number_integer()) return get_int(j, path, 1, kMaxExtent);
  const std::string s = get_string(j, path);
  int64_t v = 1;
  std::stringstream ss(s);
  std::string factor;
  while (std::getline(ss, factor, '*')) {
    auto it = dims.find(factor);
    int64_t f = 0;
    if (it != dims.end()) {
      f = it->second;
    } else if (!factor.empty() && factor.find_first_not_of("0123456789") == std::string::npos &&
               factor.size() < 12) {
      f = std::stoll(factor);
    } else {
      fail(path, fmt::format("unknown dim '{}' (not in the \"dims\" table)", factor));
    }
    if (f < 1) fail(path, fmt::format("'{}' has a factor of {}", s, f));
    if (v > kMaxExtent / f)  // checked before multiplying: no int64 overflow
      fail(path, fmt::format("extent '{}' is larger than 2^40", s));
    v *= f;
  }
  return v;
}

Shape parse_shape(const json& j, const Dims& dims, const std::string& path) {
  require_array(j, path);
  if (j.empty() || j.size() > core::kMaxDims)
    fail(path, fmt::format("expected 1 to {} dims, got {}", core::kMaxDims, j.size()));
  Shape s;
  for (size_t i = 0; i < j.size(); ++i) s.d[s.nd++] = parse_extent(j[i], dims, child(path, i));
  return s;
}

core::DType parse_dtype_at(const json& j, const std::string& path) {
  const std::string s = get_string(j, path);
  auto t = core::parse_dtype(s);
  if (!t)
    fail(path, fmt::format("unknown dtype '{}' (expected bf16, fp16, fp32, fp8_e4m3, "
                           "fp8_e5m2 or int8)",
                           s));
  return *t;
}

std::vector<Device> parse_devices(const json& j, int64_t count, int64_t first_index,
                                  const std::string& path) {
  std::vector<Device> out;
  if (j.is_array()) {
    if (static_cast<int64_t>(j.size()) != count)
      fail(path, fmt::format("expected {} devices (one per mesh rank), got {}", count, j.size()));
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string p = child(path, i);
      check_keys(j[i], {"host", "gpu"}, p);
      out.push_back({get_string(require(j[i], "host", p), child(p, "host")),
                     static_cast<int>(get_int(require(j[i], "gpu", p), child(p, "gpu"), 0, 1023))});
    }
    return out;
  }
  check_keys(j, {"host", "gpus_per_host", "first_host", "first_gpu"}, path);
  const std::string tmpl = get_string(require(j, "host", path), child(path, "host"));
  const int64_t gph =
      get_int(require(j, "gpus_per_host", path), child(path, "gpus_per_host"), 1, 1024);
  int64_t first = 0;
  if (const json* f = optional(j, "first_host", path))
    first = get_int(*f, child(path, "first_host"), 0, kMaxRanks);
  int64_t first_gpu = 0;
  if (const json* f = optional(j, "first_gpu", path))
    first_gpu = get_int(*f, child(path, "first_gpu"), 0, kMaxRanks);
  if (first_gpu + first_index + count > gph && tmpl.find("{h") == std::string::npos)
    fail(child(path, "host"),
         fmt::format("'{}' names one host, but ranks {} to {} need {} GPUs per host over several "
                     "hosts: put {{h}} in the template (e.g. \"node{{h}}\")",
                     tmpl, first_index, first_index + count - 1, gph));
  for (int64_t r = 0; r < count; ++r) {
    const int64_t idx = first_gpu + first_index + r;
    out.push_back({substitute(tmpl, {{"h", first + idx / gph}}, child(path, "host")),
                   static_cast<int>(idx % gph)});
  }
  return out;
}

std::vector<Axis> parse_axes(const json& j, const std::string& path) {
  require_array(j, path);
  if (j.empty()) fail(path, "expected at least one axis");
  std::vector<Axis> axes;
  int64_t total = 1;
  std::set<std::string> seen;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string p = child(path, i);
    check_keys(j[i], {"name", "size"}, p);
    Axis a{get_string(require(j[i], "name", p), child(p, "name")),
           get_int(require(j[i], "size", p), child(p, "size"), 1, kMaxRanks)};
    if (!seen.insert(a.name).second) fail(child(p, "name"), "duplicate axis '" + a.name + "'");
    total *= a.size;
    if (total > kMaxRanks) fail(path, "mesh has too many ranks");
    axes.push_back(a);
  }
  return axes;
}

// {"axes": [...], "devices": {...} | [...]}; device indices start at first_index (replica offset).
Mesh parse_mesh(const json& j, const std::string& path, int64_t first_index,
                const json* devices_override = nullptr) {
  check_keys(j, {"axes", "devices"}, path);
  Mesh m;
  m.axes = parse_axes(require(j, "axes", path), child(path, "axes"));
  const json* dev = devices_override ? devices_override : &require(j, "devices", path);
  m.devices = parse_devices(*dev, m.size(), first_index, child(path, "devices"));
  return m;
}

// R / Replicate / Replicate(), S(d) / Shard(d) / Shard(dim=d) (what print(dtensor.placements)
// shows), E(d) / Even(d), O(c) / Owner(c) / Stage(c), H(d, unit) / Heads(d, unit) (unit: rows
// per head, an integer or a dim name); spaces ignored.
Placement parse_one_placement(const std::string& given, const Dims& dims, const std::string& path) {
  std::string s;
  for (char ch : given)
    if (ch != ' ') s += ch;
  auto number = [&](std::string a) -> int64_t {
    if (a.rfind("dim=", 0) == 0) a = a.substr(4);
    if (a.empty() || a.size() > 9 || a.find_first_not_of("0123456789") != std::string::npos)
      fail(path, fmt::format("bad placement '{}': expected a non-negative integer argument", s));
    return std::stoll(a);
  };
  auto arg_of = [&](size_t open) -> std::string {
    if (s.empty() || s.back() != ')') fail(path, fmt::format("bad placement '{}'", given));
    return s.substr(open + 1, s.size() - open - 2);
  };
  if (s == "R" || s == "Replicate" || s == "Replicate()") return {};
  const size_t open = s.find('(');
  const std::string head = s.substr(0, open);
  if (open != std::string::npos && (head == "_StridedShard" || head == "SS")) {
    // _StridedShard(dim=0, sf=4), as DTensor prints it; SS(0,4) for short.
    std::string a = arg_of(open);
    const size_t comma = a.find(',');
    std::string sf = comma == std::string::npos ? "" : a.substr(comma + 1);
    if (sf.rfind("sf=", 0) == 0 || sf.rfind("split_factor=", 0) == 0)
      sf = sf.substr(sf.find('=') + 1);
    if (comma == std::string::npos || sf.empty())
      fail(path, fmt::format("bad placement '{}': expected _StridedShard(dim=d, sf=n)", given));
    Placement pl{Placement::Kind::kShard, number(a.substr(0, comma))};
    pl.split_factor = number(sf);
    if (pl.split_factor < 1) fail(path, fmt::format("bad placement '{}': sf must be >= 1", given));
    return pl;
  }
  if (open != std::string::npos && (head == "S" || head == "Shard"))
    return {Placement::Kind::kShard, number(arg_of(open))};
  if (open != std::string::npos && (head == "E" || head == "Even"))
    return {Placement::Kind::kEven, number(arg_of(open))};
  if (open != std::string::npos && (head == "O" || head == "Owner" || head == "Stage"))
    return {Placement::Kind::kOwner, number(arg_of(open))};
  if (open != std::string::npos && (head == "H" || head == "Heads")) {
    const std::string a = arg_of(open);
    const size_t comma = a.find(',');
    if (comma == std::string::npos)
      fail(path, fmt::format("bad placement '{}': expected H(dim, rows per head)", given));
    const std::string u = a.substr(comma + 1);
    int64_t unit = 0;
    if (auto it = dims.find(u); it != dims.end())
      unit = it->second;
    else if (!u.empty() && u.size() < 10 && u.find_first_not_of("0123456789") == std::string::npos)
      unit = std::stoll(u);
    if (unit < 1)
      fail(path, fmt::format("bad placement '{}': rows per head must be a positive integer or a "
                             "name in \"dims\"",
                             given));
    return {Placement::Kind::kHeads, number(a.substr(0, comma)), unit};
  }
  fail(path, fmt::format("bad placement '{}': expected R, S(dim), E(dim), O(coordinate) or H(dim, "
                         "rows per head)",
                         s));
}

// Heads on `axis_size` ranks of a part of `shape`: whole heads, and the heads divide the ranks
// or the ranks the heads (what vLLM asserts).
void check_heads(const Placement& pl, const Shape& shape, const Axis& axis, const std::string& what,
                 const std::string& path) {
  const int64_t ext = shape[static_cast<int>(pl.arg)];
  if (ext % pl.unit)
    fail(path, fmt::format("{}dim {} of {} rows is not a whole number of heads of {} rows", what,
                           pl.arg, ext, pl.unit));
  const int64_t n = ext / pl.unit, k = axis.size;
  if (n % k && k % n)
    fail(path, fmt::format("{}{} heads over axis '{}' of size {}: one must divide the other", what,
                           n, axis.name, k));
}

// Every H placement fits every part (each is sharded on its own) on every mesh.
void heads_fit(const PlacementMap& pm, const std::vector<std::vector<Axis>>& meshes,
               const std::vector<Shape>& parts, const std::string& path) {
  for (const auto& [axis, pl] : pm) {
    if (pl.kind != Placement::Kind::kHeads) continue;
    for (const auto& axes : meshes)
      for (const Axis& a : axes)
        if (a.name == axis)
          for (size_t i = 0; i < parts.size(); ++i)
            check_heads(pl, parts[i], a,
                        parts.size() > 1 ? fmt::format("part {} of the concat: ", i) : "",
                        child(path, axis.c_str()));
  }
}

PlacementMap parse_placement(const json* j, const std::vector<std::vector<Axis>>& meshes,
                             const Shape& shape, const Dims& dims, const Vars& vars,
                             const std::string& path) {
  PlacementMap out;
  if (!j) return out;
  require_object(*j, path);
  for (auto it = j->begin(); it != j->end(); ++it) {
    const std::string p = child(path, it.key().c_str());
    const Placement pl =
        parse_one_placement(substitute(get_string(it.value(), p), vars, p), dims, p);
    for (const auto& axes : meshes) {
      const Axis* axis = nullptr;
      for (const Axis& a : axes) axis = a.name == it.key() ? &a : axis;
      if (!axis) fail(p, fmt::format("mesh has no axis '{}'", it.key()));
      if ((pl.kind == Placement::Kind::kShard || pl.kind == Placement::Kind::kHeads ||
           pl.kind == Placement::Kind::kEven) &&
          pl.arg >= shape.nd)
        fail(p, fmt::format("shard of dim {} that does not exist (tensor has {} dims)", pl.arg,
                            shape.nd));
      if (pl.kind == Placement::Kind::kOwner && pl.arg >= axis->size)
        fail(p, fmt::format("owner coordinate {} outside axis '{}' of size {}: no rank would "
                            "hold this tensor",
                            pl.arg, axis->name, axis->size));
    }
    out[it.key()] = pl;
  }
  // A strided shard's sf is the number of pieces the other axes cut its dim into.
  for (const auto& [name, pl] : out) {
    if (!pl.split_factor) continue;
    for (const auto& axes : meshes) {
      int64_t others = 1;
      for (const Axis& a : axes) {
        auto o = out.find(a.name);
        if (a.name != name && o != out.end() && o->second.arg == pl.arg &&
            !o->second.split_factor &&
            (o->second.kind == Placement::Kind::kShard ||
             o->second.kind == Placement::Kind::kHeads))
          others *= a.size;
      }
      if (others != pl.split_factor)
        fail(child(path, name.c_str()),
             fmt::format("_StridedShard of dim {} with sf={}, but the other axes shard that dim "
                         "into {} pieces",
                         pl.arg, pl.split_factor, others));
    }
  }
  return out;
}

void check_format(const json& root, const char* format, const char* role, const std::string& path) {
  const std::string f = get_string(require(root, "format", path), child(path, "format"));
  if (f != format)
    fail(child(path, "format"), fmt::format("expected \"{}\", got \"{}\"", format, f));
  if (role) {
    const std::string r = get_string(require(root, "role", path), child(path, "role"));
    if (r != role) fail(child(path, "role"), fmt::format("expected \"{}\", got \"{}\"", role, r));
  }
}

template <typename Fn>
Status guarded(Fn&& fn) {
  try {
    fn();
    return Status::ok();
  } catch (const SpecError& e) {
    return Status(Code::kInvalidArgument, e.what());
  } catch (const nlohmann::json::exception& e) {
    return Status(Code::kInvalidArgument, e.what());
  } catch (const std::bad_alloc&) {
    return Status(Code::kInvalidArgument,
                  "the spec needs more memory than this process has (lower its sizes, or the "
                  "ParseOptions limits)");
  } catch (const std::exception& e) {
    return Status(Code::kInternal, e.what());
  }
}

Part parse_part(const json& j, const TrainerSpec& t, const Vars& vars, const std::string& path) {
  Part part;
  std::string name;
  std::string npath = path;
  if (j.is_string()) {
    name = substitute(j.get<std::string>(), vars, path);
  } else {
    check_keys(j, {"transpose"}, path);
    npath = child(path, "transpose");
    name = substitute(get_string(require(j, "transpose", path), npath), vars, npath);
    part.transpose = true;
  }
  auto it = t.index.find(name);
  if (it == t.index.end()) fail(npath, fmt::format("no trainer parameter named '{}'", name));
  part.src = it->second;
  const Shape& s = t.params[part.src].shape;
  if (part.transpose && s.nd < 2)
    fail(npath, fmt::format("cannot transpose '{}': it has {} dim", name, s.nd));
  part.shape = part.transpose ? core::transpose_last2(s) : s;
  return part;
}

void parse_mapping(const json& j, const TrainerSpec& t, const Vars& vars, DestParam& d,
                   const std::string& path) {
  if (j.is_string() || (j.is_object() && j.contains("transpose"))) {
    d.parts.push_back(parse_part(j, t, vars, path));
  } else {
    check_keys(j, {"concat", "dim", "shard"}, path);
    if (const json* sh = optional(j, "shard", path)) {
      const std::string v = get_string(*sh, child(path, "shard"));
      if (v != "whole" && v != "parts")
        fail(child(path, "shard"),
             fmt::format("'{}': expected \"parts\" (each part sharded on its own, the default) "
                         "or \"whole\" (the concatenation sharded as one tensor)",
                         v));
      d.concat_whole = v == "whole";
    }
    const std::string cp = child(path, "concat");
    const json& list = require_array(require(j, "concat", path), cp);
    if (list.empty()) fail(cp, "expected at least one source");
    for (size_t i = 0; i < list.size(); ++i)
      d.parts.push_back(parse_part(list[i], t, vars, child(cp, i)));
    d.concat_dim = static_cast<int>(
        get_int(require(j, "dim", path), child(path, "dim"), 0, core::kMaxDims - 1));
  }
  // The mapped shape: parts agree on every dim but the concat dim, which adds up.
  Shape expect = d.parts[0].shape;
  if (d.concat_dim >= expect.nd)
    fail(child(path, "dim"), fmt::format("concat dim {} does not exist (sources have {} dims)",
                                         d.concat_dim, expect.nd));
  for (size_t i = 1; i < d.parts.size(); ++i) {
    const Shape& s = d.parts[i].shape;
    bool ok = s.nd == expect.nd;
    for (int k = 0; ok && k < s.nd; ++k) ok = k == d.concat_dim || s[k] == expect[k];
    if (!ok)
      fail(child(child(path, "concat"), i),
           fmt::format("source '{}' has shape {}, which cannot concat with {} along dim {}",
                       t.params[d.parts[i].src].name, s.str(), d.parts[0].shape.str(),
                       d.concat_dim));
    expect[d.concat_dim] += s[d.concat_dim];
  }
  bool fits = expect.nd == d.shape.nd;
  for (int k = 0; fits && k < expect.nd; ++k) {
    const bool padded = std::find(d.pad_dims.begin(), d.pad_dims.end(), k) != d.pad_dims.end();
    fits = padded ? d.shape[k] >= expect[k] : d.shape[k] == expect[k];
  }
  if (!d.pad_dims.empty() && d.parts.size() != 1)
    fail(child(d.path, "pad"), "padding needs a single source (no concat)");
  if (!fits) {
    std::string srcs;
    for (const Part& p : d.parts)
      srcs += fmt::format("{}{}{}", srcs.empty() ? "" : ", ", p.transpose ? "T:" : "",
                          t.params[p.src].name);
    fail(
        child(d.path, "shape"),
        fmt::format("expected {} after mapping from {}, got {}{}", expect.str(), srcs,
                    d.shape.str(), d.pad_dims.empty() ? "" : " (larger only on the \"pad\" dims)"));
  }
}

}  // namespace

Result<nlohmann::json> load_json_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Status(Code::kInvalidArgument, fmt::format("{}: cannot open file", path));
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    return Status(Code::kInvalidArgument, fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

Result<TrainerSpec> parse_trainer(const json& j, const ParseOptions& opts) {
  TrainerSpec t;
  Status st = guarded([&] {
    const std::string path = "trainer";
    check_keys(j, {"format", "role", "model", "dims", "mesh", "params"}, path);
    check_format(j, "weightcast.spec/v1", "trainer", path);
    const Dims dims = parse_dims(j, path, opts.scale);
    t.mesh = parse_mesh(require(j, "mesh", path), child(path, "mesh"), 0);
    const std::string pp = child(path, "params");
    const json& params = require_array(require(j, "params", path), pp);
    Budget budget{opts};
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string p = child(pp, i);
      check_keys(params[i], {"name", "shape", "dtype", "placement", "for"}, p);
      const Shape shape = parse_shape(require(params[i], "shape", p), dims, child(p, "shape"));
      const core::DType dt = parse_dtype_at(require(params[i], "dtype", p), child(p, "dtype"));
      const std::string tmpl = get_string(require(params[i], "name", p), child(p, "name"));
      budget.take(p, expansion_size(optional(params[i], "for", p), p), shape, dt);
      expand(optional(params[i], "for", p), p, kMaxExpansion, [&](const Vars& vars) {
        Param prm{substitute(tmpl, vars, child(p, "name")), shape, dt,
                  parse_placement(optional(params[i], "placement", p), {t.mesh.axes}, shape, dims,
                                  vars, child(p, "placement")),
                  p};
        heads_fit(prm.placement, {t.mesh.axes}, {prm.shape}, child(p, "placement"));
        if (!t.index.emplace(prm.name, static_cast<int>(t.params.size())).second)
          fail(child(p, "name"), fmt::format("duplicate parameter name '{}'", prm.name));
        t.params.push_back(std::move(prm));
      });
    }
    if (t.params.empty()) fail(pp, "expected at least one parameter");
  });
  if (!st) return st;
  return t;
}

Result<InferenceSpec> parse_inference(const json& j, const TrainerSpec& t,
                                      const ParseOptions& opts) {
  InferenceSpec inf;
  Status st = guarded([&] {
    const std::string path = "inference";
    check_keys(j, {"format", "role", "model", "dims", "replicas", "params"}, path);
    check_format(j, "weightcast.spec/v1", "inference", path);
    const Dims dims = parse_dims(j, path, opts.scale);
    const std::string rp = child(path, "replicas");
    const json& reps = require(j, "replicas", path);
    int64_t next_index = 0;
    if (reps.is_array()) {
      if (reps.empty()) fail(rp, "expected at least one replica");
      for (size_t i = 0; i < reps.size(); ++i) {
        inf.replicas.push_back(parse_mesh(reps[i], child(rp, i), next_index));
        next_index += inf.replicas.back().size();
      }
    } else {
      check_keys(reps, {"count", "mesh", "devices"}, rp);
      const int64_t count = get_int(require(reps, "count", rp), child(rp, "count"), 1, 4096);
      for (int64_t r = 0; r < count; ++r) {
        inf.replicas.push_back(parse_mesh(require(reps, "mesh", rp), child(rp, "mesh"), next_index,
                                          &require(reps, "devices", rp)));
        next_index += inf.replicas.back().size();
      }
    }
    std::vector<std::vector<Axis>> meshes;
    for (const Mesh& m : inf.replicas) meshes.push_back(m.axes);
    std::set<std::string> scale_names;
    const std::string pp = child(path, "params");
    const json& params = require_array(require(j, "params", path), pp);
    Budget budget{opts};
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string p = child(pp, i);
      const json& e = params[i];
      check_keys(
          e, {"name", "shape", "dtype", "placement", "for", "from", "quant", "pad", "view_items"},
          p);
      const Shape shape = parse_shape(require(e, "shape", p), dims, child(p, "shape"));
      const core::DType dt = parse_dtype_at(require(e, "dtype", p), child(p, "dtype"));
      const std::string tmpl = get_string(require(e, "name", p), child(p, "name"));
      std::optional<Quant> quant;
      if (const json* q = optional(e, "quant", p)) {
        const std::string qp = child(p, "quant");
        check_keys(*q, {"block", "scale"}, qp);
        if (dt != core::DType::kFP8E4M3 && dt != core::DType::kFP8E5M2)
          fail(qp,
               fmt::format("block quantization needs an fp8 dtype, got {}", core::dtype_name(dt)));
        if (shape.nd < 2) fail(qp, "block quantization needs at least 2 dims");
        const json& b = require_array(require(*q, "block", qp), child(qp, "block"));
        if (b.size() != 2) fail(child(qp, "block"), "expected [rows, cols]");
        Quant qq;
        qq.block_rows = get_int(b[0], child(child(qp, "block"), size_t{0}), 1, 1 << 20);
        qq.block_cols = get_int(b[1], child(child(qp, "block"), size_t{1}), 1, 1 << 20);
        if (qq.block_rows % opts.scale || qq.block_cols % opts.scale)
          fail(child(qp, "block"), fmt::format("not divisible by --scale {}", opts.scale));
        qq.block_rows /= opts.scale;
        qq.block_cols /= opts.scale;
        qq.scale_name = get_string(require(*q, "scale", qp), child(qp, "scale"));
        quant = qq;
      }
      // Block scales are counted with their tensor: at most a quarter of its bytes.
      budget.take(p, expansion_size(optional(e, "for", p), p), shape, dt);
      expand(optional(e, "for", p), p, kMaxExpansion, [&](const Vars& vars) {
        DestParam d;
        d.name = substitute(tmpl, vars, child(p, "name"));
        d.shape = shape;
        d.dtype = dt;
        d.path = p;
        d.placement = parse_placement(optional(e, "placement", p), meshes, shape, dims, vars,
                                      child(p, "placement"));
        d.quant = quant;
        if (d.quant) {
          d.quant->scale_name =
              substitute(quant->scale_name, vars, child(child(p, "quant"), "scale"));
          if (!scale_names.insert(d.quant->scale_name).second)
            fail(child(child(p, "quant"), "scale"),
                 fmt::format("scale tensor name '{}' used twice", d.quant->scale_name));
        }
        if (const json* pd = optional(e, "pad", p)) {
          const std::string ppath = child(p, "pad");
          require_array(*pd, ppath);
          for (size_t k = 0; k < pd->size(); ++k)
            d.pad_dims.push_back(
                static_cast<int>(get_int((*pd)[k], child(ppath, k), 0, std::max(0, shape.nd - 1))));
          if (d.quant) fail(ppath, "padding and block quantization cannot be combined");
        }
        parse_mapping(require(e, "from", p), t, vars, d, child(p, "from"));
        if (const json* v = optional(e, "view_items", p)) {
          const std::string vp = child(p, "view_items");
          d.view_items = get_int(*v, vp, 1, 1 << 20);
          if (d.shape[0] % d.view_items)
            fail(vp,
                 fmt::format("{} items do not divide dim 0 of {} rows", d.view_items, d.shape[0]));
          if (d.quant && (d.shape[0] / d.view_items) % d.quant->block_rows)
            fail(vp, fmt::format("{} rows per item are not whole blocks of {} rows",
                                 d.shape[0] / d.view_items, d.quant->block_rows));
        }
        std::vector<Shape> part_shapes;
        for (const Part& pt : d.parts) part_shapes.push_back(d.pad_dims.empty() ? pt.shape : shape);
        heads_fit(d.placement, meshes, part_shapes, child(p, "placement"));
        if (!inf.index.emplace(d.name, static_cast<int>(inf.params.size())).second)
          fail(child(p, "name"), fmt::format("duplicate parameter name '{}'", d.name));
        inf.params.push_back(std::move(d));
      });
    }
    if (inf.params.empty()) fail(pp, "expected at least one parameter");
    for (const DestParam& d : inf.params)
      if (d.quant && inf.index.count(d.quant->scale_name))
        fail(child(child(d.path, "quant"), "scale"),
             fmt::format("scale tensor name '{}' is also a parameter name", d.quant->scale_name));
  });
  if (!st) return st;
  return inf;
}

}  // namespace weightcast::spec
