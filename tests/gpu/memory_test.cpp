// Buffer over host and CUDA memory. The CUDA case needs a GPU: it skips itself without one (CI),
// and scripts/gpu-tests.sh runs this label on the GPU machine.
#include "weightcast/exec/memory.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace weightcast::exec {
namespace {

std::vector<std::byte> pattern(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + 7) & 0xff);
  return v;
}

TEST(Memory, HostRoundTrip) {
  auto b = Buffer::allocate(MemoryKind::kHost, 1 << 20);
  ASSERT_TRUE(b) << b.status().message();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 4096, 0u);
  const auto in = pattern(1 << 20);
  ASSERT_TRUE(b->copy_from_host(in.data(), in.size()));
  std::vector<std::byte> out(in.size());
  ASSERT_TRUE(b->copy_to_host(out.data(), out.size()));
  EXPECT_EQ(in, out);
  EXPECT_FALSE(b->copy_to_host(out.data(), 16, (1 << 20) - 8));  // out of bounds is an error
  Buffer moved = std::move(b).value();
  EXPECT_EQ(moved.size(), 1u << 20);
}

TEST(Memory, CudaRoundTrip) {
  if (!cuda_built()) {
    auto b = Buffer::allocate(MemoryKind::kCuda, 1024);
    ASSERT_FALSE(b);
    EXPECT_NE(b.status().message().find("without CUDA"), std::string::npos);
    GTEST_SKIP() << "built without CUDA";
  }
  if (cuda_devices() == 0)
    GTEST_SKIP() << "no GPU on this machine (CUDA is built in; run scripts/gpu-tests.sh on one)";
  for (int dev = 0; dev < cuda_devices(); ++dev) {
    auto b = Buffer::allocate(MemoryKind::kCuda, 64 << 20, dev);
    ASSERT_TRUE(b) << b.status().message();
    const auto in = pattern(64 << 20);
    ASSERT_TRUE(b->copy_from_host(in.data(), in.size()));
    std::vector<std::byte> out(in.size());
    ASSERT_TRUE(b->copy_to_host(out.data(), out.size()));
    EXPECT_EQ(in, out) << "device " << dev;
  }
}

}  // namespace
}  // namespace weightcast::exec
