// Machine profiles (weightcast.profile/v1): the simulator's numbers, each field checked and named
// on error, with the source of every number carried along.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "weightcast/sim/sim.h"

namespace weightcast::sim {

namespace {
using nlohmann::json;

struct Field {
  const char* name;
  double Profile::*num = nullptr;
  bool Profile::*flag = nullptr;
  double lo = 0, hi = 1e18;
};
// Every numeric and boolean field, with the range it must lie in.
const Field kFields[] = {
    {"nic_gbps", &Profile::nic_gbps, nullptr, 0, 1e6},
    {"nic_efficiency", &Profile::nic_efficiency, nullptr, 1e-3, 1},
    {"write_us", &Profile::write_us, nullptr, 0, 1e6},
    {"latency_us", &Profile::latency_us, nullptr, 0, 1e7},
    {"host_bytes_per_s", &Profile::host_bytes_per_s, nullptr, 0, 1e15},
    {"host_write_us", &Profile::host_write_us, nullptr, 0, 1e6},
    {"ready_rtt_us", &Profile::ready_rtt_us, nullptr, 0, 1e7},
    {"ready_server_us", &Profile::ready_server_us, nullptr, 0, 1e6},
    {"ready_key_us", &Profile::ready_key_us, nullptr, 0, 1e6},
    {"nvlink_bytes_per_s", &Profile::nvlink_bytes_per_s, nullptr, 0, 1e15},
    {"gather_piece_us", &Profile::gather_piece_us, nullptr, -1, 1e7},
    {"project_bytes_per_s", &Profile::project_bytes_per_s, nullptr, 1e3, 1e15},
    {"project_us", &Profile::project_us, nullptr, 0, 1e7},
    {"cpu_cores", &Profile::cpu_cores, nullptr, 0, 1e5},
    {"d2h_bytes_per_s", &Profile::d2h_bytes_per_s, nullptr, 1e3, 1e15},
    {"h2d_bytes_per_s", &Profile::h2d_bytes_per_s, nullptr, 1e3, 1e15},
    {"start_skew_us", &Profile::start_skew_us, nullptr, 0, 1e9},
    {"shards_on_gpu", nullptr, &Profile::shards_on_gpu},
    {"tensors_on_gpu", nullptr, &Profile::tensors_on_gpu},
    {"nic_reads_gpu", nullptr, &Profile::nic_reads_gpu},
    {"nic_writes_gpu", nullptr, &Profile::nic_writes_gpu},
    {"host_path_on_cores", nullptr, &Profile::host_path_on_cores},
};
}  // namespace

Status Profile::check() const {
  for (const Field& f : kFields) {
    if (!f.num) continue;
    const double v = this->*f.num;
    if (!std::isfinite(v) || v < f.lo || v > f.hi)
      return invalid("profile {}: {} = {} is outside [{}, {}]", name, f.name, v, f.lo, f.hi);
  }
  return Status::ok();
}

Result<Profile> parse_profile(const std::string& text, const std::string& where) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return invalid("{}: not a JSON object", where);
  if (j.value("format", "") != Profile::kFormat)
    return invalid("{}: format: expected \"{}\"", where, Profile::kFormat);
  Profile p;
  p.name = j.value("name", where);
  if (!j["name"].is_null() && !j["name"].is_string())
    return invalid("{}: name: not a string", where);
  for (const auto& [key, v] : j.items()) {
    if (key == "format" || key == "name" || key == "sources") continue;
    const Field* f = nullptr;
    for (const Field& x : kFields)
      if (key == x.name) f = &x;
    if (!f) return invalid("{}: {}: unknown field", where, key);
    if (f->num) {
      if (!v.is_number()) return invalid("{}: {}: expected a number", where, key);
      p.*(f->num) = v.get<double>();
    } else {
      if (!v.is_boolean()) return invalid("{}: {}: expected true or false", where, key);
      p.*(f->flag) = v.get<bool>();
    }
  }
  if (j.contains("sources")) {
    if (!j["sources"].is_object()) return invalid("{}: sources: expected an object", where);
    for (const auto& [key, v] : j["sources"].items()) {
      if (!v.is_string()) return invalid("{}: sources.{}: expected a string", where, key);
      p.sources[key] = v.get<std::string>();
    }
  }
  if (Status s = p.check(); !s) return invalid("{}: {}", where, s.message());
  return p;
}

Result<Profile> load_profile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return invalid("profile {}: cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_profile(ss.str(), path);
}

std::string profile_json(const Profile& p) {
  json j;
  j["format"] = Profile::kFormat;
  j["name"] = p.name;
  for (const Field& f : kFields) {
    if (f.num)
      j[f.name] = p.*(f.num);
    else
      j[f.name] = p.*(f.flag);
  }
  if (!p.sources.empty()) j["sources"] = p.sources;
  return j.dump(1) + "\n";
}

}  // namespace weightcast::sim
