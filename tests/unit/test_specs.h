// A tiny but complete set of specs used across tests: FSDP + pipeline stage on the trainer,
// two TP2 replicas with a fused concat, a transpose + cast and an FP8 block-quantized tensor.
#pragma once

#include <nlohmann/json.hpp>

namespace weightcast::testing {

inline nlohmann::json tiny_trainer() {
  return nlohmann::json::parse(R"js({
    "format": "weightcast.spec/v1", "role": "trainer", "dims": {"h": 6, "n": 8, "m": 4},
    "mesh": {"axes": [{"name": "pp", "size": 2}, {"name": "fsdp", "size": 2}],
             "devices": {"host": "t{h}", "gpus_per_host": 4}},
    "params": [
      {"name": "a", "shape": ["n", "h"], "dtype": "bf16", "placement": {"fsdp": "S(0)", "pp": "O(0)"}},
      {"name": "b", "shape": ["m", "h"], "dtype": "bf16", "placement": {"fsdp": "S(0)", "pp": "O(0)"}},
      {"name": "c", "shape": ["h", 5], "dtype": "fp32", "placement": {"pp": "O(1)", "fsdp": "S(1)"}},
      {"name": "layer.{i}.w", "for": {"i": [0, 3]}, "shape": [3, 4], "dtype": "bf16",
       "placement": {"pp": "O({i/2})", "fsdp": "S(0)"}}
    ]})js");
}

inline nlohmann::json tiny_inference() {
  return nlohmann::json::parse(R"js({
    "format": "weightcast.spec/v1", "role": "inference", "dims": {"h": 6, "n": 8, "n+m": 12},
    "replicas": {"count": 2, "mesh": {"axes": [{"name": "tp", "size": 2}]},
                 "devices": {"host": "i{h}", "gpus_per_host": 4}},
    "params": [
      {"name": "ab", "shape": ["n+m", "h"], "dtype": "bf16", "placement": {"tp": "S(0)"},
       "from": {"concat": ["a", "b"], "dim": 0}},
      {"name": "ct", "shape": [5, "h"], "dtype": "bf16", "placement": {"tp": "S(1)"},
       "from": {"transpose": "c"}},
      {"name": "aq", "shape": ["n", "h"], "dtype": "fp8_e4m3", "placement": {"tp": "S(1)"},
       "from": "a", "quant": {"block": [2, 2], "scale": "aq.scale"}},
      {"name": "layer.{i}.w", "for": {"i": [0, 3]}, "shape": [3, 4], "dtype": "bf16",
       "from": "layer.{i}.w"}
    ]})js");
}

inline nlohmann::json tiny_topology() {
  return nlohmann::json::parse(R"js({
    "format": "weightcast.topology/v1",
    "hosts": [{"name": "t{h}", "for": {"h": [0, 1]}, "gpus": 4, "nics_per_gpu": 2, "nic_gbps": 100},
              {"name": "i{h}", "for": {"h": [0, 1]}, "gpus": 4, "nics_per_gpu": 1, "nic_gbps": 200}]})js");
}

}  // namespace weightcast::testing
