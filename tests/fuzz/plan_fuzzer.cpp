// libFuzzer target for the plan loader: a weightcast.plan/v1 document (whole plan or a rank's
// part) must load and verify, or be refused, never crash or read out of bounds. Inputs starting
// with '{' are plan text; any other input edits the numbers of a valid plan of the tiny specs
// (and of its parts): 4 bytes choose a number, 8 give its new value.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../unit/test_specs.h"
#include "weightcast/plan/check.h"
#include "weightcast/plan/part.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"

using namespace weightcast;  // NOLINT
using nlohmann::json;

namespace {

const spec::Inputs& inputs() {
  static const spec::Inputs in =
      *spec::make_inputs(testing::tiny_trainer(), testing::tiny_inference(),
                         testing::tiny_topology(), {}, {"t", "i", "c"});
  return in;
}

void numbers(json& j, std::vector<json*>& out) {
  if (j.is_number()) out.push_back(&j);
  if (j.is_array() || j.is_object())
    for (auto& e : j) numbers(e, out);
}

void run(const std::string& text) {
  auto p = plan::from_json(text);
  if (!p) return;
  if (!plan::check_plan(inputs(), *p)) return;
  if (p->part_role.empty()) (void)plan::verify_plan(inputs(), *p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == '{') {
    run(std::string(reinterpret_cast<const char*>(data), size));
    return 0;
  }
  static const plan::Plan whole = *plan::make_plan(inputs(), {});
  static const std::vector<std::string> docs = {plan::to_json(whole),
                                                plan::to_json(plan::trainer_part(whole, 1)),
                                                plan::to_json(plan::inference_part(whole, 2))};
  json j = json::parse(docs[size % docs.size()]);
  std::vector<json*> nums;
  numbers(j, nums);
  for (size_t pos = 0; pos + 12 <= size; pos += 12) {
    uint32_t which;
    int64_t value;
    std::memcpy(&which, data + pos, 4);
    std::memcpy(&value, data + pos + 4, 8);
    json& n = *nums[which % nums.size()];
    if (value < 0 && (value & 1))
      n = static_cast<uint64_t>(value);  // 2^63 and beyond
    else
      n = value;
  }
  run(j.dump());
  return 0;
}
