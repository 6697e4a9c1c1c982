// Parsing and validating specs. Every error names the JSON path and what was expected, e.g.
// `trainer.params[17].shape: expected 2 dims, got 3`.
#pragma once

#include <array>
#include <nlohmann/json.hpp>
#include <string>

#include "weightcast/core/status.h"
#include "weightcast/spec/spec.h"

namespace weightcast::spec {

struct ParseOptions {
  // Divides every named dim (the spec's "dims" table) and every quantization block by this
  // factor, keeping layouts: the verifier's way to replay a 1T-parameter layout in megabytes.
  int64_t scale = 1;
  // Resource bounds, so that a small hostile spec cannot take a process's memory or time (each
  // is an error naming the JSON path; raise them for a deliberate giant):
  int64_t max_params = int64_t{1} << 18;   // per spec, after "for" expansion (Kimi-K2: ~70k)
  uint64_t max_bytes = uint64_t{1} << 46;  // per spec, every tensor's bytes summed (64 TiB)
  // A trainer parameter that no inference tensor consumes is an error unless this is set.
  bool allow_unused = false;
};

Result<nlohmann::json> load_json_file(const std::string& path);

Result<TrainerSpec> parse_trainer(const nlohmann::json& j, const ParseOptions& opts = {});
Result<InferenceSpec> parse_inference(const nlohmann::json& j, const TrainerSpec& trainer,
                                      const ParseOptions& opts = {});
Result<Topology> parse_topology(const nlohmann::json& j);

// Cross-file checks: every rank's host exists in the topology with enough GPUs and no GPU is
// used twice. (That every destination byte has a trainer holder follows from parsing: each
// mapping names existing trainer params and owner placements stay inside their axis.)
// Devices against the topology; `names` (trainer, inference, topology files) label the errors.
Status validate(const TrainerSpec& t, const InferenceSpec& inf, const Topology& topo,
                const std::array<std::string, 3>& names = {"trainer", "inference", "topology"});

struct Inputs {
  TrainerSpec trainer;
  InferenceSpec inference;
  Topology topology;
  int64_t scale = 1;  // the ParseOptions::scale these were parsed with
};
// Parses and validates three JSON documents; `names` label them in errors.
Result<Inputs> make_inputs(const nlohmann::json& trainer, const nlohmann::json& inference,
                           const nlohmann::json& topology, const ParseOptions& opts,
                           const std::array<std::string, 3>& names);
// Loads, parses and validates the three files.
Result<Inputs> load_inputs(const std::string& trainer_path, const std::string& inference_path,
                           const std::string& topology_path, const ParseOptions& opts = {});

}  // namespace weightcast::spec
