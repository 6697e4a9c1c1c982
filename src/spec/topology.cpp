// Topology parsing, mesh helpers and the cross-file validation of the three inputs.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>
#include <tuple>

#include "json_reader.h"
#include "pattern.h"
#include "weightcast/spec/layout.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::spec {

using namespace detail;  // NOLINT

int64_t Mesh::size() const {
  int64_t n = 1;
  for (const Axis& a : axes) n *= a.size;
  return n;
}

int64_t Mesh::coord(int64_t rank, int axis) const {
  int64_t stride = 1;
  for (size_t i = axes.size(); i-- > static_cast<size_t>(axis) + 1;) stride *= axes[i].size;
  return (rank / stride) % axes[axis].size;
}

int Mesh::axis_index(const std::string& name) const {
  for (size_t i = 0; i < axes.size(); ++i)
    if (axes[i].name == name) return static_cast<int>(i);
  return -1;
}

std::string Placement::str() const {
  switch (kind) {
    case Kind::kReplicate:
      return "R";
    case Kind::kShard:
      return split_factor ? fmt::format("SS({},{})", arg, split_factor) : fmt::format("S({})", arg);
    case Kind::kOwner:
      return fmt::format("O({})", arg);
    case Kind::kHeads:
      return fmt::format("H({},{})", arg, unit);
    case Kind::kEven:
      return fmt::format("E({})", arg);
  }
  return "?";
}

const HostInfo* Topology::find(const std::string& host) const {
  auto it = index.find(host);
  return it == index.end() ? nullptr : &hosts[it->second];
}

Result<Topology> parse_topology(const json& j) {
  Topology t;
  try {
    const std::string path = "topology";
    check_keys(j, {"format", "name", "hosts"}, path);
    const std::string f = get_string(require(j, "format", path), child(path, "format"));
    if (f != "weightcast.topology/v1")
      fail(child(path, "format"),
           fmt::format("expected \"weightcast.topology/v1\", got \"{}\"", f));
    const std::string hp = child(path, "hosts");
    const json& hosts = require_array(require(j, "hosts", path), hp);
    for (size_t i = 0; i < hosts.size(); ++i) {
      const std::string p = child(hp, i);
      const json& h = hosts[i];
      check_keys(h,
                 {"name", "for", "gpus", "nics_per_gpu", "nic_gbps", "nvlink_gbps", "gather_us",
                  "nvlink_domain", "colocated"},
                 p);
      const std::string tmpl = get_string(require(h, "name", p), child(p, "name"));
      HostInfo base;
      base.gpus = static_cast<int>(get_int(require(h, "gpus", p), child(p, "gpus"), 1, 1024));
      if (const json* v = optional(h, "nics_per_gpu", p))
        base.nics_per_gpu = static_cast<int>(get_int(*v, child(p, "nics_per_gpu"), 1, 16));
      if (const json* v = optional(h, "nic_gbps", p))
        base.nic_gbps = get_number(*v, child(p, "nic_gbps"), 0.001, 1e6);
      if (const json* v = optional(h, "nvlink_gbps", p))
        base.nvlink_gbps = get_number(*v, child(p, "nvlink_gbps"), 0.001, 1e7);
      if (const json* v = optional(h, "gather_us", p))
        base.gather_us = get_number(*v, child(p, "gather_us"), 0, 1e6);
      if (const json* v = optional(h, "colocated", p)) {
        if (!v->is_boolean())
          fail(child(p, "colocated"), fmt::format("expected true or false, got {}", v->dump()));
        base.colocated = v->get<bool>();
      }
      const json* dom = optional(h, "nvlink_domain", p);
      expand(optional(h, "for", p), p, 1 << 20, [&](const Vars& vars) {
        HostInfo hi = base;
        hi.name = substitute(tmpl, vars, child(p, "name"));
        hi.nvlink_domain = dom ? substitute(get_string(*dom, child(p, "nvlink_domain")), vars,
                                            child(p, "nvlink_domain"))
                               : hi.name;
        if (!t.index.emplace(hi.name, static_cast<int>(t.hosts.size())).second)
          fail(child(p, "name"), fmt::format("duplicate host name '{}'", hi.name));
        t.hosts.push_back(std::move(hi));
      });
    }
    if (t.hosts.empty()) fail(hp, "expected at least one host");
  } catch (const SpecError& e) {
    return Status(Code::kInvalidArgument, e.what());
  }
  return t;
}

namespace {

// `where` names the file and JSON path of the mesh's devices ("t.json: trainer.mesh.devices"),
// `topo_file` the topology's file: errors here span files.
Status check_devices(const Mesh& m, const std::string& what, const std::string& where,
                     const Topology& topo, const std::string& topo_file,
                     std::map<std::tuple<std::string, int, int>, std::string>& used) {
  for (size_t r = 0; r < m.devices.size(); ++r) {
    const Device& d = m.devices[r];
    const std::string who = fmt::format("{} rank {} ({})", what, r, where);
    const HostInfo* h = topo.find(d.host);
    if (!h)
      return invalid("{} runs on host '{}', which {} (topology.hosts) does not list", who, d.host,
                     topo_file);
    if (d.gpu >= h->gpus)
      return invalid("{} runs on {} GPU {}, but {} gives that host {} GPUs", who, d.host, d.gpu,
                     topo_file, h->gpus);
    // On a colocated host the two sides are counted apart: a trainer rank may share its GPU
    // with an inference rank, never with another trainer rank (nor inference with inference).
    const int side = h->colocated && what != "trainer" ? 1 : 0;
    auto [it, fresh] = used.emplace(std::make_tuple(d.host, d.gpu, side), who);
    if (!fresh)
      return invalid("{} and {} both run on {} GPU {}{}", it->second, who, d.host, d.gpu,
                     h->colocated ? ""
                                  : " (a host marked \"colocated\": true lets a trainer "
                                    "and an inference rank share a GPU)");
  }
  return Status::ok();
}

}  // namespace

Status validate(const TrainerSpec& t, const InferenceSpec& inf, const Topology& topo,
                const std::array<std::string, 3>& names) {
  std::map<std::tuple<std::string, int, int>, std::string> used;
  if (Status s = check_devices(t.mesh, "trainer", names[0] + ": trainer.mesh.devices", topo,
                               names[2], used);
      !s)
    return s;
  for (size_t r = 0; r < inf.replicas.size(); ++r)
    if (Status s = check_devices(inf.replicas[r], fmt::format("inference replica {}", r),
                                 fmt::format("{}: inference.replicas[{}]", names[1], r), topo,
                                 names[2], used);
        !s)
      return s;
  return Status::ok();
}

Status check_unused(const TrainerSpec& t, const InferenceSpec& inf, const std::string& file) {
  std::vector<bool> used(t.params.size());
  for (const DestParam& d : inf.params)
    for (const Part& p : d.parts) used[static_cast<size_t>(p.src)] = true;
  std::vector<std::string> names;
  size_t n = 0;
  for (size_t i = 0; i < used.size(); ++i)
    if (!used[i] && n++ < 5)
      names.push_back(fmt::format("'{}' ({})", t.params[i].name, t.params[i].path));
  if (!n) return Status::ok();
  return invalid(
      "{}: {} trainer parameter(s) reach no inference tensor: {}{} (a missing "
      "\"from\"? --allow-unused if that is deliberate)",
      file, n, fmt::join(names, ", "), n > names.size() ? ", ..." : "");
}

Result<Inputs> make_inputs(const json& tj, const json& ij, const json& cj, const ParseOptions& opts,
                           const std::array<std::string, 3>& names) {
  if (opts.scale < 1) return invalid("--scale must be at least 1, got {}", opts.scale);
  auto with_file = [](const std::string& file, const Status& s) {
    return Status(s.code(), fmt::format("{}: {}", file, s.message()));
  };
  auto t = parse_trainer(tj, opts);
  if (!t) return with_file(names[0], t.status());
  auto inf = parse_inference(ij, *t, opts);
  if (!inf) return with_file(names[1], inf.status());
  auto topo = parse_topology(cj);
  if (!topo) return with_file(names[2], topo.status());
  Inputs in{std::move(t).value(), std::move(inf).value(), std::move(topo).value(), opts.scale};
  if (Status s = validate(in.trainer, in.inference, in.topology, names); !s) return s;
  if (!opts.allow_unused)
    if (Status s = check_unused(in.trainer, in.inference, names[0]); !s) return s;
  return in;
}

Result<Inputs> load_inputs(const std::string& trainer_path, const std::string& inference_path,
                           const std::string& topology_path, const ParseOptions& opts) {
  auto tj = load_json_file(trainer_path);
  if (!tj) return tj.status();
  auto ij = load_json_file(inference_path);
  if (!ij) return ij.status();
  auto cj = load_json_file(topology_path);
  if (!cj) return cj.status();
  return make_inputs(*tj, *ij, *cj, opts, {trainer_path, inference_path, topology_path});
}

}  // namespace weightcast::spec
