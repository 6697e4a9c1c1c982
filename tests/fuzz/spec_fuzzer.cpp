// libFuzzer target for the spec parsers: any bytes, as trainer, inference (against a fixed valid
// trainer) and topology JSON, must yield a spec or an error value, never a crash or a hang.
#include <cstddef>
#include <cstdint>
#include <string>

#include "../unit/test_specs.h"
#include "weightcast/plan/planner.h"
#include "weightcast/spec/spec_parser.h"

using namespace weightcast;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  static const spec::TrainerSpec kTrainer = *spec::parse_trainer(testing::tiny_trainer());
  auto t = spec::parse_trainer(j);
  auto i = spec::parse_inference(j, kTrainer);
  auto c = spec::parse_topology(j);
  // Whatever parses must also plan (or fail cleanly) when combined with the tiny specs.
  if (i) {
    auto in = spec::make_inputs(testing::tiny_trainer(), j, testing::tiny_topology(), {},
                                {"t", "i", "c"});
    if (in) (void)plan::make_plan(*in, {});
  }
  (void)t;
  (void)c;
  return 0;
}
