// safetensors reader and writer.
#include "weightcast/exec/safetensors.h"

#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

namespace weightcast::exec {

namespace {
struct Map {
  core::DType t;
  const char* name;
};
constexpr Map kMap[] = {{core::DType::kBF16, "BF16"},       {core::DType::kFP16, "F16"},
                        {core::DType::kFP32, "F32"},        {core::DType::kFP8E4M3, "F8_E4M3"},
                        {core::DType::kFP8E5M2, "F8_E5M2"}, {core::DType::kInt8, "I8"}};
}  // namespace

const char* safetensors_dtype(core::DType t) {
  for (const Map& m : kMap)
    if (m.t == t) return m.name;
  return "?";
}

Status write_safetensors(const std::string& path, const std::vector<StView>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const StView& t : tensors) {
    std::vector<int64_t> shape(t.shape.d.begin(), t.shape.d.begin() + t.shape.nd);
    h[t.name] = {{"dtype", safetensors_dtype(t.dtype)},
                 {"shape", shape},
                 {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Status(Code::kSystem, fmt::format("{}: cannot open for writing", tmp));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(header.size() >> (8 * i));
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const StView& t : tensors)
      f.write(reinterpret_cast<const char*>(t.data.data()),
              static_cast<std::streamsize>(t.data.size()));
    if (!f.flush()) return Status(Code::kSystem, fmt::format("{}: write failed", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return Status(Code::kSystem, fmt::format("rename to {} failed", path));
  return Status::ok();
}

Result<std::map<std::string, StTensor>> read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return invalid("{}: cannot open file", path);
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint8_t len8[8];
  if (size < 8 || !f.read(reinterpret_cast<char*>(len8), 8))
    return invalid("{}: too short for a safetensors file", path);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t{len8[i]} << (8 * i);
  if (hlen > size - 8 || hlen > (100u << 20))
    return invalid("{}: header length {} exceeds the file", path, hlen);
  std::string header(hlen, '\0');
  f.read(header.data(), static_cast<std::streamsize>(hlen));
  const uint64_t data_size = size - 8 - hlen;
  nlohmann::json h = nlohmann::json::parse(header, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return invalid("{}: header is not a JSON object", path);
  std::map<std::string, StTensor> out;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& e = it.value();
    const std::string where = fmt::format("{}: tensor '{}'", path, it.key());
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      return invalid("{}: needs dtype, shape and data_offsets", where);
    StTensor t;
    bool known = false;
    for (const Map& m : kMap)
      if (e["dtype"] == m.name) {
        t.dtype = m.t;
        known = true;
      }
    if (!known) return invalid("{}: unsupported dtype {}", where, e["dtype"].dump());
    if (!e["shape"].is_array() || e["shape"].size() > core::kMaxDims)
      return invalid("{}: bad shape", where);
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) return invalid("{}: bad shape", where);
      t.shape.d[t.shape.nd++] = d.get<int64_t>();
    }
    const auto& o = e["data_offsets"];
    if (!o.is_array() || o.size() != 2 || !o[0].is_number_unsigned() || !o[1].is_number_unsigned())
      return invalid("{}: bad data_offsets", where);
    const uint64_t b = o[0].get<uint64_t>(), end = o[1].get<uint64_t>();
    if (b > end || end > data_size)
      return invalid("{}: data_offsets [{}, {}) outside the {} data bytes", where, b, end,
                     data_size);
    if (end - b != static_cast<uint64_t>(t.shape.numel()) * core::dtype_size(t.dtype))
      return invalid("{}: {} bytes for shape {} of {}", where, end - b, t.shape.str(),
                     core::dtype_name(t.dtype));
    t.data.resize(end - b);
    f.seekg(static_cast<std::streamoff>(8 + hlen + b));
    f.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    out[it.key()] = std::move(t);
  }
  return out;
}

}  // namespace weightcast::exec
