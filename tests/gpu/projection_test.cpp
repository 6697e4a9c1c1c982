// Device projections against the CPU reference, bit for bit: casts of every float input type to
// every output type (NaN, infinities, subnormals, out-of-range values included), and FP8 block
// quantization with whole and edge blocks. Needs a GPU: skips itself without one (CI), and
// scripts/gpu-tests.sh runs it on the GPU machine.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "weightcast/core/dtype.h"
#include "weightcast/exec/cuda_project.h"
#include "weightcast/exec/memory.h"
#include "weightcast/plan/project.h"

namespace weightcast::exec {
namespace {

using core::DType;

bool have_gpu() { return cuda_built() && cuda_devices() > 0; }

// n values of type t (raw bytes): mostly normal-range randoms with every special case mixed in.
std::vector<std::byte> values(DType t, size_t n, uint32_t seed, float range) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-range, range);
  const float special[] = {0.0f,     -0.0f,    INFINITY, -INFINITY, NAN,
                           1e-8f,    -3e-6f,   448.0f,   464.0f,    -465.0f,
                           57344.0f, 60000.0f, 1e30f,    6.1e-5f,   0.0009765625f};
  std::vector<std::byte> b(n * core::dtype_size(t));
  for (size_t i = 0; i < n; ++i) {
    const float f = i % 97 < std::size(special) ? special[i % 97] : u(rng);
    core::store_from_float(t, f, b.data() + i * core::dtype_size(t));
  }
  return b;
}

Buffer on_device(const std::vector<std::byte>& host) {
  auto b = Buffer::allocate(MemoryKind::kCuda, host.size());
  EXPECT_TRUE(b) << b.status().message();
  EXPECT_TRUE(b->copy_from_host(host.data(), host.size()));
  return std::move(b).value();
}

std::vector<std::byte> to_host(const Buffer& b, size_t bytes) {
  std::vector<std::byte> h(bytes);
  EXPECT_TRUE(b.copy_to_host(h.data(), bytes));
  return h;
}

TEST(CudaProjection, CastsMatchTheCpuBitForBit) {
  if (!have_gpu()) {
    if (!cuda_built()) {
      EXPECT_FALSE(cuda_cast(nullptr, DType::kBF16, nullptr, DType::kFP32, 1));
    }
    GTEST_SKIP() << (cuda_built() ? "no GPU" : "built without CUDA");
  }
  const size_t n = (1 << 20) + 37;
  for (DType in : {DType::kBF16, DType::kFP16, DType::kFP32})
    for (DType out : {DType::kBF16, DType::kFP16, DType::kFP32, DType::kFP8E4M3, DType::kFP8E5M2}) {
      const auto src = values(in, n, 7, 70000.0f);
      std::vector<std::byte> want(n * core::dtype_size(out));
      for (size_t i = 0; i < n; ++i)
        core::store_from_float(out, core::load_as_float(in, src.data() + i * core::dtype_size(in)),
                               want.data() + i * core::dtype_size(out));
      Buffer s = on_device(src);
      auto d = Buffer::allocate(MemoryKind::kCuda, want.size());
      ASSERT_TRUE(d);
      ASSERT_TRUE(cuda_cast(s.data(), in, d->data(), out, n));
      const auto got = to_host(*d, want.size());
      size_t diff = 0, first = 0;
      for (size_t i = 0; i < want.size(); ++i)
        if (got[i] != want[i] && diff++ == 0) first = i;
      EXPECT_EQ(diff, 0u) << core::dtype_name(in) << " -> " << core::dtype_name(out)
                          << ": first differing byte " << first;
    }
}

TEST(CudaProjection, Fp8BlockQuantizationMatchesTheCpuBitForBit) {
  if (!have_gpu()) {
    if (!cuda_built()) {
      EXPECT_FALSE(cuda_quantize_blocks(nullptr, DType::kBF16, 1, 1, 1, 1, 1, DType::kFP8E4M3,
                                        nullptr, nullptr));
    }
    GTEST_SKIP() << (cuda_built() ? "no GPU" : "built without CUDA");
  }
  struct Case {
    int64_t lead, R, C, br, bc;
  };
  for (const Case c : {Case{1, 256, 384, 128, 128}, Case{3, 300, 200, 128, 128},
                       Case{2, 7, 9, 4, 4}, Case{1, 1, 1, 128, 128}})
    for (DType in : {DType::kBF16, DType::kFP16, DType::kFP32})
      for (DType fp8 : {DType::kFP8E4M3, DType::kFP8E5M2}) {
        const size_t n = static_cast<size_t>(c.lead * c.R * c.C);
        auto src = values(in, n, 11, 3.0f);
        // Finite inputs only (a trainer's weights), one all-zero block, one huge block.
        for (size_t i = 0; i < n; ++i) {
          const float f = core::load_as_float(in, src.data() + i * core::dtype_size(in));
          if (!std::isfinite(f) || std::fabs(f) > 1e4f)
            core::store_from_float(in, 0.5f, src.data() + i * core::dtype_size(in));
        }
        std::vector<float> x(n);
        for (size_t i = 0; i < n; ++i)
          x[i] = core::load_as_float(in, src.data() + i * core::dtype_size(in));
        const int64_t sr = (c.R + c.br - 1) / c.br, sc = (c.C + c.bc - 1) / c.bc;
        std::vector<std::byte> want(n), want_s(static_cast<size_t>(c.lead * sr * sc) * 4);
        plan::quantize_blocks_cpu(x.data(), c.lead, c.R, c.C, c.br, c.bc, fp8, want.data(),
                                  want_s.data());
        Buffer s = on_device(src);
        auto o = Buffer::allocate(MemoryKind::kCuda, n);
        auto sc_b = Buffer::allocate(MemoryKind::kCuda, want_s.size());
        ASSERT_TRUE(o && sc_b);
        ASSERT_TRUE(cuda_quantize_blocks(s.data(), in, c.lead, c.R, c.C, c.br, c.bc, fp8, o->data(),
                                         reinterpret_cast<float*>(sc_b->data())));
        EXPECT_EQ(to_host(*o, n), want) << c.lead << "x" << c.R << "x" << c.C << " "
                                        << core::dtype_name(in) << " -> " << core::dtype_name(fp8);
        EXPECT_EQ(to_host(*sc_b, want_s.size()), want_s) << "scales";
      }
}

}  // namespace
}  // namespace weightcast::exec
