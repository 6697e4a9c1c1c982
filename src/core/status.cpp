// Status formatting.
#include "weightcast/core/status.h"

namespace weightcast {

const char* code_name(Code c) {
  switch (c) {
    case Code::kOk:
      return "ok";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kSystem:
      return "system";
    case Code::kTransport:
      return "transport";
    case Code::kRemote:
      return "remote";
    case Code::kTimeout:
      return "timeout";
    case Code::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return fmt::format("{}: {}", code_name(code_), message_);
}

}  // namespace weightcast
