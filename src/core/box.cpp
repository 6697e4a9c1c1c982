// Box arithmetic. Runs are found by locating the outermost dim from which the box covers whole
// trailing extents: everything inside it is one run, everything outside is iterated.
#include "weightcast/core/box.h"

#include <fmt/format.h>

#include <algorithm>

namespace weightcast::core {

Shape Shape::of(std::initializer_list<int64_t> dims) {
  Shape s;
  for (int64_t v : dims) s.d[s.nd++] = v;
  return s;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= d[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (nd != o.nd) return false;
  for (int i = 0; i < nd; ++i)
    if (d[i] != o.d[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < nd; ++i) s += fmt::format("{}{}", i ? ", " : "", d[i]);
  return s + "]";
}

Box Box::full(const Shape& s) {
  Box b;
  b.nd = s.nd;
  for (int i = 0; i < s.nd; ++i) b.hi[i] = s.d[i];
  return b;
}

Shape Box::extents() const {
  Shape s;
  s.nd = nd;
  for (int i = 0; i < nd; ++i) s.d[i] = hi[i] - lo[i];
  return s;
}

int64_t Box::numel() const {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= std::max<int64_t>(0, hi[i] - lo[i]);
  return n;
}

bool Box::contains(const Box& o) const {
  for (int i = 0; i < nd; ++i)
    if (o.lo[i] < lo[i] || o.hi[i] > hi[i]) return false;
  return true;
}

bool Box::operator==(const Box& o) const {
  if (nd != o.nd) return false;
  for (int i = 0; i < nd; ++i)
    if (lo[i] != o.lo[i] || hi[i] != o.hi[i]) return false;
  return true;
}

std::string Box::str() const {
  std::string s = "[";
  for (int i = 0; i < nd; ++i) s += fmt::format("{}{}:{}", i ? ", " : "", lo[i], hi[i]);
  return s + "]";
}

Range chunk_range(int64_t n, int64_t k, int64_t i) {
  const int64_t c = (n + k - 1) / k;
  const int64_t lo = std::min(n, i * c);
  return {lo, std::min(n, lo + c)};
}

std::optional<Box> intersect(const Box& a, const Box& b) {
  Box r;
  r.nd = a.nd;
  for (int i = 0; i < a.nd; ++i) {
    r.lo[i] = std::max(a.lo[i], b.lo[i]);
    r.hi[i] = std::min(a.hi[i], b.hi[i]);
    if (r.lo[i] >= r.hi[i]) return std::nullopt;
  }
  return r;
}

Box relative(const Box& b, const Box& origin) {
  Box r = b;
  for (int i = 0; i < b.nd; ++i) {
    r.lo[i] -= origin.lo[i];
    r.hi[i] -= origin.lo[i];
  }
  return r;
}

Box absolute(const Box& b, const Box& origin) {
  Box r = b;
  for (int i = 0; i < b.nd; ++i) {
    r.lo[i] += origin.lo[i];
    r.hi[i] += origin.lo[i];
  }
  return r;
}

Shape transpose_last2(const Shape& s) {
  Shape r = s;
  if (s.nd >= 2) std::swap(r.d[s.nd - 1], r.d[s.nd - 2]);
  return r;
}

Box transpose_last2(const Box& b) {
  Box r = b;
  if (b.nd >= 2) {
    std::swap(r.lo[b.nd - 1], r.lo[b.nd - 2]);
    std::swap(r.hi[b.nd - 1], r.hi[b.nd - 2]);
  }
  return r;
}

int64_t offset_of(const Shape& s, const Box& b) {
  int64_t off = 0;
  for (int i = 0; i < s.nd; ++i) off = off * s.d[i] + b.lo[i];
  return off;
}

namespace {
// First dim k such that dims k+1.. are fully covered; the run is box[k] x trailing extents.
int run_dim(const Shape& s, const Box& b) {
  int k = s.nd - 1;
  while (k > 0 && b.lo[k] == 0 && b.hi[k] == s.d[k]) --k;
  return k;
}
}  // namespace

int64_t count_runs(const Shape& s, const Box& b) {
  if (b.empty()) return 0;
  if (s.nd == 0) return 1;
  const int k = run_dim(s, b);
  int64_t n = 1;
  for (int i = 0; i < k; ++i) n *= b.extent(i);
  return n;
}

bool is_contiguous(const Shape& s, const Box& b) { return count_runs(s, b) <= 1; }

int64_t run_elems(const Shape& s, const Box& b) {
  if (b.empty()) return 0;
  const int k = s.nd == 0 ? 0 : run_dim(s, b);
  int64_t n = s.nd == 0 ? 1 : b.extent(k);
  for (int i = k + 1; i < s.nd; ++i) n *= s.d[i];
  return n;
}

int64_t for_each_run(const Shape& s, const Box& b,
                     const std::function<void(int64_t, int64_t)>& fn) {
  if (b.empty()) return 0;
  if (s.nd == 0) {
    fn(0, 1);
    return 1;
  }
  const int k = run_dim(s, b);
  int64_t inner = 1;
  for (int i = k + 1; i < s.nd; ++i) inner *= s.d[i];
  const int64_t len = b.extent(k) * inner;
  std::array<int64_t, kMaxDims> idx{};
  for (int i = 0; i < k; ++i) idx[i] = b.lo[i];
  int64_t runs = 0;
  while (true) {
    int64_t off = 0;
    for (int i = 0; i < s.nd; ++i) off = off * s.d[i] + (i < k ? idx[i] : (i == k ? b.lo[k] : 0));
    fn(off, len);
    ++runs;
    int i = k - 1;
    for (; i >= 0; --i) {
      if (++idx[i] < b.hi[i]) break;
      idx[i] = b.lo[i];
    }
    if (i < 0) break;
  }
  return runs;
}

}  // namespace weightcast::core
