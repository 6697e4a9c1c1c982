// Internal: typed access to JSON values that throws SpecError naming the path. The parser's public
// functions catch it and return Status, so no exception leaves the spec module.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace weightcast::spec::detail {

using nlohmann::json;

struct SpecError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& path, const std::string& what);

std::string type_name(const json& j);
const json& require(const json& obj, const char* key, const std::string& path);
const json* optional(const json& obj, const char* key, const std::string& path);
const json& require_object(const json& j, const std::string& path);
const json& require_array(const json& j, const std::string& path);
std::string get_string(const json& j, const std::string& path);
int64_t get_int(const json& j, const std::string& path, int64_t min, int64_t max);
double get_number(const json& j, const std::string& path, double min, double max);
// Rejects keys not in `allowed`, so a typo is an error instead of a silent default.
void check_keys(const json& obj, std::initializer_list<const char*> allowed,
                const std::string& path);
std::string child(const std::string& path, const char* key);
std::string child(const std::string& path, size_t index);

}  // namespace weightcast::spec::detail
