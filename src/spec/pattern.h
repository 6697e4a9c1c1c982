// Internal: `layers.{i}.mlp.experts.{e}.w1` style patterns. A "for" object gives each variable a
// half-open range; `{e/48}`, `{i%2}`, `{i+1}`, `{i-3}`, `{e*2}` apply integer ops left to right.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "json_reader.h"

namespace weightcast::spec::detail {

using Vars = std::map<std::string, int64_t>;

std::string substitute(const std::string& tmpl, const Vars& vars, const std::string& path);

// How many entries a "for" expands to (1 without one), capped at 2^40; validates the ranges.
int64_t expansion_size(const json* for_obj, const std::string& path);
// Calls fn once per assignment of the "for" ranges (once with no vars when `for_obj` is null).
// Throws when the expansion would exceed `limit` entries.
void expand(const json* for_obj, const std::string& path, int64_t limit,
            const std::function<void(const Vars&)>& fn);

}  // namespace weightcast::spec::detail
