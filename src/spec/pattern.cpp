// Pattern substitution and "for" expansion.
#include "pattern.h"

#include <fmt/format.h>

#include <cctype>
#include <vector>

namespace weightcast::spec::detail {

namespace {

int64_t parse_num(const std::string& e, size_t& i, const std::string& path) {
  size_t start = i;
  while (i < e.size() && std::isdigit(static_cast<unsigned char>(e[i]))) ++i;
  if (i == start || i - start > 12) fail(path, fmt::format("bad number in pattern '{{{}}}'", e));
  return std::stoll(e.substr(start, i - start));
}

int64_t eval(const std::string& e, const Vars& vars, const std::string& path) {
  size_t i = 0;
  while (i < e.size() && (std::isalnum(static_cast<unsigned char>(e[i])) || e[i] == '_')) ++i;
  const std::string name = e.substr(0, i);
  auto it = vars.find(name);
  if (it == vars.end())
    fail(path, fmt::format("pattern '{{{}}}' uses unknown variable '{}'", e, name));
  int64_t v = it->second;
  while (i < e.size()) {
    const char op = e[i++];
    const int64_t n = parse_num(e, i, path);
    switch (op) {
      case '+':
        v += n;
        break;
      case '-':
        v -= n;
        break;
      case '*':
        v *= n;
        break;
      case '/':
      case '%':
        if (n == 0) fail(path, fmt::format("pattern '{{{}}}' divides by zero", e));
        v = op == '/' ? v / n : v % n;
        break;
      default:
        fail(path, fmt::format("pattern '{{{}}}': unknown operator '{}'", e, op));
    }
  }
  return v;
}

}  // namespace

std::string substitute(const std::string& tmpl, const Vars& vars, const std::string& path) {
  if (tmpl.find('{') == std::string::npos) return tmpl;
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      if (tmpl[i] == '}') fail(path, fmt::format("unbalanced '}}' in '{}'", tmpl));
      out += tmpl[i];
      continue;
    }
    const size_t close = tmpl.find('}', i);
    if (close == std::string::npos) fail(path, fmt::format("unbalanced '{{' in '{}'", tmpl));
    out += std::to_string(eval(tmpl.substr(i + 1, close - i - 1), vars, path));
    i = close;
  }
  return out;
}

namespace {

using Ranges = std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>>;

// The validated ranges of a "for" object and how many entries they make (capped at 2^40, so a
// product of huge ranges cannot overflow).
Ranges ranges_of(const json& for_obj, const std::string& fpath, int64_t& total) {
  require_object(for_obj, fpath);
  Ranges ranges;
  total = 1;
  for (auto it = for_obj.begin(); it != for_obj.end(); ++it) {
    const std::string p = child(fpath, it.key().c_str());
    const json& r = require_array(it.value(), p);
    if (r.size() != 2) fail(p, fmt::format("expected [first, end), got {} values", r.size()));
    const int64_t lo = get_int(r[0], child(p, size_t{0}), 0, 1 << 30);
    const int64_t hi = get_int(r[1], child(p, size_t{1}), lo, 1 << 30);
    ranges.push_back({it.key(), {lo, hi}});
    constexpr int64_t kCap = int64_t{1} << 40;
    total = hi == lo ? 0 : total > kCap / (hi - lo) ? kCap : total * (hi - lo);
  }
  return ranges;
}

}  // namespace

int64_t expansion_size(const json* for_obj, const std::string& path) {
  if (!for_obj) return 1;
  int64_t total = 0;
  ranges_of(*for_obj, child(path, "for"), total);
  return total;
}

void expand(const json* for_obj, const std::string& path, int64_t limit,
            const std::function<void(const Vars&)>& fn) {
  if (!for_obj) {
    fn({});
    return;
  }
  const std::string fpath = child(path, "for");
  int64_t total = 0;
  const Ranges ranges = ranges_of(*for_obj, fpath, total);
  if (total > limit) fail(fpath, fmt::format("expands to more than {} entries", limit));
  if (total == 0) return;  // an empty range: no entries
  Vars vars;
  for (auto& [k, r] : ranges) vars[k] = r.first;
  while (true) {
    fn(vars);
    int i = static_cast<int>(ranges.size()) - 1;
    for (; i >= 0; --i) {
      auto& [k, r] = ranges[i];
      if (++vars[k] < r.second) break;
      vars[k] = r.first;
    }
    if (i < 0) break;
  }
}

}  // namespace weightcast::spec::detail
