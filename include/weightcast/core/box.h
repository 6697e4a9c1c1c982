// N-dimensional index boxes and the row-major run arithmetic every layout question reduces to:
// torch.chunk ranges, intersections, and "which contiguous element runs does a box cover".
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace weightcast::core {

inline constexpr int kMaxDims = 6;

// A shape: up to kMaxDims extents.
struct Shape {
  int nd = 0;
  std::array<int64_t, kMaxDims> d{};

  static Shape of(std::initializer_list<int64_t> dims);
  int64_t operator[](int i) const { return d[i]; }
  int64_t& operator[](int i) { return d[i]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  std::string str() const;  // "[4096, 128]"
};

// Half-open box [lo, hi) per dim.
struct Box {
  int nd = 0;
  std::array<int64_t, kMaxDims> lo{}, hi{};

  static Box full(const Shape& s);
  int64_t extent(int i) const { return hi[i] - lo[i]; }
  Shape extents() const;
  int64_t numel() const;
  bool empty() const { return numel() == 0; }
  bool contains(const Box& o) const;
  bool operator==(const Box& o) const;
  std::string str() const;  // "[0:128, 0:4096]"
};

// torch.chunk semantics: chunk size ceil(n/k); trailing chunks may be short or empty.
struct Range {
  int64_t lo, hi;
};
Range chunk_range(int64_t n, int64_t k, int64_t i);

std::optional<Box> intersect(const Box& a, const Box& b);

// `b` expressed relative to the origin `origin` (b must lie inside origin).
Box relative(const Box& b, const Box& origin);
// `b` shifted by +origin.lo.
Box absolute(const Box& b, const Box& origin);

// Swaps the last two dims of a shape / box (the only transpose mappings support).
Shape transpose_last2(const Shape& s);
Box transpose_last2(const Box& b);

// Contiguous element runs a box (in local coordinates of a row-major tensor of shape `s`) covers,
// in row-major order: fn(element_offset, element_count). Returns the number of runs.
int64_t for_each_run(const Shape& s, const Box& b,
                     const std::function<void(int64_t off, int64_t len)>& fn);
int64_t count_runs(const Shape& s, const Box& b);
// True when the box is one contiguous run of its tensor.
bool is_contiguous(const Shape& s, const Box& b);

// Elements per run of `b` in a tensor of shape `s` (every run of a box has the same length).
int64_t run_elems(const Shape& s, const Box& b);

// Row-major element offset of the box's first element.
int64_t offset_of(const Shape& s, const Box& b);

}  // namespace weightcast::core
