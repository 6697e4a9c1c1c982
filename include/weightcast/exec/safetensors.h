// safetensors files: the ecosystem's weight format (8-byte little-endian header length, a JSON
// header of {name: {dtype, shape, data_offsets}}, then the bytes). Used to load trainer weights
// and to dump what each inference rank received, so anyone can check it with their own tools.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "weightcast/core/box.h"
#include "weightcast/core/dtype.h"
#include "weightcast/core/status.h"

namespace weightcast::exec {

struct StTensor {
  core::DType dtype = core::DType::kBF16;
  core::Shape shape;
  std::vector<std::byte> data;
};

struct StView {
  std::string name;
  core::DType dtype;
  core::Shape shape;
  std::span<const std::byte> data;
};

const char* safetensors_dtype(core::DType t);  // "BF16", "F8_E4M3", ...

// Writes atomically (temp file, then rename).
Status write_safetensors(const std::string& path, const std::vector<StView>& tensors,
                         const std::map<std::string, std::string>& metadata = {});
// Reads and validates: header size, JSON, known dtypes, offsets in range and matching shapes.
Result<std::map<std::string, StTensor>> read_safetensors(const std::string& path);

}  // namespace weightcast::exec
