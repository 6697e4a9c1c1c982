// Box arithmetic: torch.chunk ranges, intersections and row-major runs.
#include "weightcast/core/box.h"

#include <gtest/gtest.h>

#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::core {
namespace {

TEST(Box, ChunkMatchesTorchChunk) {
  // torch.chunk(arange(10), 4) -> sizes 3,3,3,1
  const int64_t expect10[][2] = {{0, 3}, {3, 6}, {6, 9}, {9, 10}};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(chunk_range(10, 4, i).lo, expect10[i][0]);
    EXPECT_EQ(chunk_range(10, 4, i).hi, expect10[i][1]);
  }
  // torch.chunk(arange(5), 4) -> sizes 2,2,1 and an empty fourth shard (DTensor pads it).
  EXPECT_EQ(chunk_range(5, 4, 2).hi - chunk_range(5, 4, 2).lo, 1);
  EXPECT_EQ(chunk_range(5, 4, 3).hi - chunk_range(5, 4, 3).lo, 0);
  // 2 over 4 ranks: two ranks hold one each, two hold nothing.
  EXPECT_EQ(chunk_range(2, 4, 1).lo, 1);
  EXPECT_EQ(chunk_range(2, 4, 2).hi - chunk_range(2, 4, 2).lo, 0);
}

TEST(Box, IntersectAndRelative) {
  Box a = Box::full(Shape::of({10, 8}));
  Box b = a;
  b.lo = {2, 3};
  b.hi = {12, 5};
  auto x = intersect(a, b);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->str(), "[2:10, 3:5]");
  EXPECT_EQ(x->numel(), 16);
  Box c = a;
  c.lo = {10, 0};
  c.hi = {11, 8};
  EXPECT_FALSE(intersect(a, c));
  EXPECT_EQ(relative(*x, b).str(), "[0:8, 0:2]");
  EXPECT_EQ(absolute(relative(*x, b), b), *x);
}

TEST(Box, RunsOfBoxes) {
  const Shape s = Shape::of({4, 6, 8});
  std::vector<std::pair<int64_t, int64_t>> runs;
  Box b = Box::full(s);
  b.lo = {1, 2, 0};
  b.hi = {3, 4, 8};  // rows 2..4 of planes 1..3: whole rows, so one run per plane
  for_each_run(s, b, [&](int64_t off, int64_t len) { runs.push_back({off, len}); });
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0], std::make_pair(int64_t{1 * 48 + 2 * 8}, int64_t{16}));
  EXPECT_EQ(runs[1], std::make_pair(int64_t{2 * 48 + 2 * 8}, int64_t{16}));
  EXPECT_EQ(count_runs(s, b), 2);
  EXPECT_EQ(run_elems(s, b), 16);
  EXPECT_FALSE(is_contiguous(s, b));
  Box full_planes = Box::full(s);
  full_planes.lo[0] = 1;
  full_planes.hi[0] = 3;
  EXPECT_TRUE(is_contiguous(s, full_planes));
  EXPECT_EQ(offset_of(s, full_planes), 48);
  Box col = Box::full(s);
  col.lo[2] = 3;
  col.hi[2] = 4;
  EXPECT_EQ(count_runs(s, col), 24);
  EXPECT_EQ(run_elems(s, col), 1);
}

TEST(Box, RunsCoverEveryElementOnce) {
  const Shape s = Shape::of({3, 5, 7});
  Box b = Box::full(s);
  b.lo = {0, 1, 2};
  b.hi = {3, 4, 6};
  std::vector<int> hit(static_cast<size_t>(s.numel()), 0);
  for_each_run(s, b, [&](int64_t off, int64_t len) {
    for (int64_t i = 0; i < len; ++i) ++hit[off + i];
  });
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j)
      for (int64_t k = 0; k < 7; ++k)
        EXPECT_EQ(hit[(i * 5 + j) * 7 + k], (j >= 1 && j < 4 && k >= 2 && k < 6) ? 1 : 0);
}

TEST(Box, Transpose) {
  EXPECT_EQ(transpose_last2(Shape::of({2, 3, 5})).str(), "[2, 5, 3]");
  Box b = Box::full(Shape::of({4, 6}));
  b.lo[1] = 2;
  EXPECT_EQ(transpose_last2(b).str(), "[2:6, 0:4]");
}

TEST(Status, ResultCarriesValueOrError) {
  Result<int> ok = 3;
  EXPECT_TRUE(ok.is_ok());
  EXPECT_EQ(*ok, 3);
  Result<int> bad = invalid("x{}", 1);
  EXPECT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message(), "x1");
  EXPECT_EQ(bad.status().to_string(), "invalid argument: x1");
}

}  // namespace
}  // namespace weightcast::core
