// Built-in configs compiled into the binary (see embedded_configs.cpp.in).
#pragma once

#include <string>
#include <vector>

namespace weightcast::cli {

struct EmbeddedConfig {
  const char* name;
  const char* trainer;
  const char* inference;
  const char* topology;
};

const std::vector<EmbeddedConfig>& embedded_configs();

}  // namespace weightcast::cli
