// JSON access helpers with path-carrying errors.
#include "json_reader.h"

#include <fmt/format.h>

#include <cmath>

namespace weightcast::spec::detail {

void fail(const std::string& path, const std::string& what) {
  throw SpecError(fmt::format("{}: {}", path, what));
}

std::string type_name(const json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  return fmt::format("{} {}", j.is_array() || j.is_object() ? "an" : "a", j.type_name());
}

std::string child(const std::string& path, const char* key) { return path + "." + key; }
std::string child(const std::string& path, size_t index) {
  return fmt::format("{}[{}]", path, index);
}

const json& require_object(const json& j, const std::string& path) {
  if (!j.is_object()) fail(path, "expected an object, got " + type_name(j));
  return j;
}

const json& require_array(const json& j, const std::string& path) {
  if (!j.is_array()) fail(path, "expected an array, got " + type_name(j));
  return j;
}

const json& require(const json& obj, const char* key, const std::string& path) {
  require_object(obj, path);
  auto it = obj.find(key);
  if (it == obj.end()) fail(child(path, key), "missing required field");
  return *it;
}

const json* optional(const json& obj, const char* key, const std::string& path) {
  require_object(obj, path);
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const json& j, const std::string& path) {
  if (!j.is_string()) fail(path, "expected a string, got " + type_name(j));
  return j.get<std::string>();
}

int64_t get_int(const json& j, const std::string& path, int64_t min, int64_t max) {
  if (!j.is_number_integer()) fail(path, "expected an integer, got " + type_name(j));
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail(path, fmt::format("expected an integer in [{}, {}], got {}", min, max, j.dump()));
  const auto v = j.get<int64_t>();
  if (v < min || v > max)
    fail(path, fmt::format("expected an integer in [{}, {}], got {}", min, max, v));
  return v;
}

double get_number(const json& j, const std::string& path, double min, double max) {
  if (!j.is_number()) fail(path, "expected a number, got " + type_name(j));
  const double v = j.get<double>();
  if (!std::isfinite(v) || v < min || v > max)
    fail(path, fmt::format("expected a number in [{}, {}], got {}", min, max, j.dump()));
  return v;
}

void check_keys(const json& obj, std::initializer_list<const char*> allowed,
                const std::string& path) {
  require_object(obj, path);
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const char* k : allowed) ok = ok || it.key() == k;
    if (!ok) {
      std::string list;
      for (const char* k : allowed) list += fmt::format("{}{}", list.empty() ? "" : ", ", k);
      fail(child(path, it.key().c_str()), "unknown field (expected one of: " + list + ")");
    }
  }
}

}  // namespace weightcast::spec::detail
