// Device projections against the CPU reference, bit for bit: casts of every float input type to
// every output type (NaN, infinities, subnormals, out-of-range values included), and FP8 block
// quantization with whole and edge blocks. Needs a GPU: skips itself without one (CI), and
// scripts/gpu-tests.sh runs it on the GPU machine.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../unit/test_specs.h"
#include "weightcast/core/dtype.h"
#include "weightcast/exec/cuda_project.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/project_cuda.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/project.h"
#include "weightcast/spec/spec_parser.h"

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
  // An odd count takes the scalar kernel; multiples of 8 the fast one (rows of 8 and of 128).
  for (const size_t n : {size_t{(1 << 20) + 37}, size_t{(1 << 20) + 40}, size_t{1 << 20}})
    for (DType in : {DType::kBF16, DType::kFP16, DType::kFP32})
      for (DType out :
           {DType::kBF16, DType::kFP16, DType::kFP32, DType::kFP8E4M3, DType::kFP8E5M2}) {
        const auto src = values(in, n, 7, 70000.0f);
        std::vector<std::byte> want(n * core::dtype_size(out));
        for (size_t i = 0; i < n; ++i)
          core::store_from_float(out,
                                 core::load_as_float(in, src.data() + i * core::dtype_size(in)),
                                 want.data() + i * core::dtype_size(out));
        Buffer s = on_device(src);
        auto d = Buffer::allocate(MemoryKind::kCuda, want.size());
        ASSERT_TRUE(d);
        ASSERT_TRUE(cuda_cast(s.data(), in, d->data(), out, n));
        const auto got = to_host(*d, want.size());
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < want.size(); ++i)
          if (got[i] != want[i] && diff++ == 0) first = i;
        EXPECT_EQ(diff, 0u) << n << " values " << core::dtype_name(in) << " -> "
                            << core::dtype_name(out) << ": first differing byte " << first;
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

// The fast kernel's rare blocks, each a 128x128 tile of its own: a NaN (a second, float absmax),
// an infinity and both together (exact division, NaNs written as the reference writes them),
// scales under 2^-80 and subnormal inputs (exact division), all zeros (scale 1), and one at
// exactly the FP8 range; the other tiles ordinary.
TEST(CudaProjection, RareQuantizationBlocksMatchTheCpuBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << (cuda_built() ? "no GPU" : "built without CUDA");
  const int64_t R = 256, C = 640, B = 128, nc = C / B;
  const size_t n = static_cast<size_t>(R * C);
  for (DType in : {DType::kBF16, DType::kFP16, DType::kFP32})
    for (DType fp8 : {DType::kFP8E4M3, DType::kFP8E5M2}) {
      std::mt19937 rng(5);
      std::uniform_real_distribution<float> u(-3.0f, 3.0f);
      std::vector<float> x(n);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t tile = (r / B) * nc + c / B;
          float f = u(rng);
          if (tile == 3) f *= 1e-30f;                     // scale far under 2^-80 (0 in FP16)
          if (tile == 4) f = 0.0f;                        // scale 1
          if (tile == 5) f *= 1e-38f;                     // subnormal inputs
          if (tile == 6) f = (c % 2 ? -448.0f : 0.125f);  // amax exactly the E4M3 range
          x[static_cast<size_t>(r * C + c)] = f;
        }
      auto at = [&](int64_t tile, int64_t r, int64_t c) -> float& {
        return x[static_cast<size_t>(((tile / nc) * B + r) * C + (tile % nc) * B + c)];
      };
      at(0, 5, 7) = NAN;
      at(1, 127, 127) = INFINITY;
      at(2, 0, 0) = -INFINITY;
      at(2, 64, 3) = NAN;
      at(7, 1, 2) = NAN;
      at(7, 1, 3) = -NAN;
      std::vector<std::byte> src(n * core::dtype_size(in));
      for (size_t i = 0; i < n; ++i)
        core::store_from_float(in, x[i], src.data() + i * core::dtype_size(in));
      for (size_t i = 0; i < n; ++i)  // what the reference sees: x as stored in `in`
        x[i] = core::load_as_float(in, src.data() + i * core::dtype_size(in));
      const size_t ns = static_cast<size_t>((R / B) * nc);
      std::vector<std::byte> want(n), want_s(ns * 4);
      plan::quantize_blocks_cpu(x.data(), 1, R, C, B, B, fp8, want.data(), want_s.data());
      Buffer s = on_device(src);
      auto o = Buffer::allocate(MemoryKind::kCuda, n);
      auto sc_b = Buffer::allocate(MemoryKind::kCuda, want_s.size());
      ASSERT_TRUE(o && sc_b);
      ASSERT_TRUE(cuda_quantize_blocks(s.data(), in, 1, R, C, B, B, fp8, o->data(),
                                       reinterpret_cast<float*>(sc_b->data())));
      const auto got = to_host(*o, n);
      for (size_t tile = 0; tile < ns; ++tile) {
        size_t diff = 0;
        for (int64_t r = 0; r < B; ++r)
          for (int64_t c = 0; c < B; ++c) {
            const size_t i = static_cast<size_t>(((static_cast<int64_t>(tile) / nc) * B + r) * C +
                                                 (static_cast<int64_t>(tile) % nc) * B + c);
            diff += got[i] != want[i];
          }
        EXPECT_EQ(diff, 0u) << "tile " << tile << " " << core::dtype_name(in) << " -> "
                            << core::dtype_name(fp8);
      }
      EXPECT_EQ(to_host(*sc_b, want_s.size()), want_s)
          << "scales " << core::dtype_name(in) << " -> " << core::dtype_name(fp8);
    }
}

// Every projection of whole plans (the tiny specs: fused concat, transpose + cast, FP8; the demo
// MoE; DeepSeek-V3 scaled), run by project_cuda from device copies of the trainer params and by
// project_cpu from host copies: the staged bytes (and scales) must be identical.
ProjectCounts check_plan(const spec::Inputs& in, const char* name, size_t max_projects) {
  ProjectCounts counts;
  [&] {
    auto p = plan::make_plan(in, {});
    ASSERT_TRUE(p) << p.status().message();
    // Full trainer params, host and device, with finite values of each param's dtype.
    std::vector<std::vector<std::byte>> host;
    std::vector<Buffer> dev;
    for (size_t i = 0; i < in.trainer.params.size(); ++i) {
      const spec::Param& sp = in.trainer.params[i];
      host.push_back(values(sp.dtype, static_cast<size_t>(sp.shape.numel()),
                            static_cast<uint32_t>(i + 1), 2.0f));
      for (size_t e = 0; e < static_cast<size_t>(sp.shape.numel()); ++e) {
        std::byte* q = host.back().data() + e * core::dtype_size(sp.dtype);
        if (!std::isfinite(core::load_as_float(sp.dtype, q)) ||
            std::fabs(core::load_as_float(sp.dtype, q)) > 1e4f)
          core::store_from_float(sp.dtype, 0.75f, q);
      }
      dev.push_back(on_device(host.back()));
    }
    Buffer scratch;
    size_t checked = 0;
    const size_t step = std::max<size_t>(1, p->projects.size() / max_projects);
    for (size_t k = 0; k < p->projects.size(); k += step) {
      const plan::Project& pr = p->projects[k];
      const spec::DestParam& dp = in.inference.params[p->dests[pr.dest].param];
      auto whole = [&](const plan::Project::Input& inp, bool device) -> plan::Held {
        const int src = dp.parts.at(inp.part).src;
        core::Box b;
        b.nd = in.trainer.params[src].shape.nd;
        for (int d = 0; d < b.nd; ++d) b.lo[d] = 0, b.hi[d] = in.trainer.params[src].shape[d];
        return {b, device ? dev[src].data() : host[src].data()};
      };
      const uint64_t end = std::max(
          pr.staging_off + pr.out_bytes,
          pr.scale_dest >= 0 ? pr.scale_off + static_cast<uint64_t>(pr.scale_box.numel()) * 4 : 0);
      std::vector<std::byte> want(end);
      ASSERT_TRUE(plan::project_cpu(
          in, *p, pr, [&](const auto& i) { return whole(i, false); }, want.data(), want.size()));
      auto staging = Buffer::allocate(MemoryKind::kCuda, end);
      ASSERT_TRUE(staging);
      Status s = project_cuda(
          in, *p, pr, [&](const auto& i) { return whole(i, true); }, staging->data(), end, scratch,
          0, &counts);
      ASSERT_TRUE(s) << name << " project " << k << ": " << s.message();
      const auto got = to_host(*staging, end);
      ASSERT_TRUE(std::equal(got.begin() + static_cast<long>(pr.staging_off),
                             got.begin() + static_cast<long>(pr.staging_off + pr.out_bytes),
                             want.begin() + static_cast<long>(pr.staging_off)))
          << name << " project " << k << " (" << dp.name << ", box " << pr.box.str() << ")";
      if (pr.scale_dest >= 0) {
        ASSERT_TRUE(std::equal(got.begin() + static_cast<long>(pr.scale_off), got.end(),
                               want.begin() + static_cast<long>(pr.scale_off)))
            << name << " project " << k << " scales";
      }
      ++checked;
    }
    std::printf("%s: %zu of %zu projections identical on GPU and CPU\n", name, checked,
                p->projects.size());
    EXPECT_GT(checked, 0u);
    // The same projections in batches, as the executor queues them: per sender, up to 16 in a row
    // whose staging ranges do not overlap, through project_cuda_batch.
    auto range = [](const plan::Project& q) {
      return std::pair<uint64_t, uint64_t>{
          q.staging_off,
          std::max(q.staging_off + q.out_bytes,
                   q.scale_dest >= 0 ? q.scale_off + static_cast<uint64_t>(q.scale_box.numel()) * 4
                                     : 0)};
    };
    size_t batched = 0, batches = 0;
    for (uint32_t s = 0; s < p->senders.size() && batched < max_projects; ++s) {
      std::vector<size_t> mine;
      for (size_t k = 0; k < p->projects.size(); ++k)
        if (p->projects[k].sender == s) mine.push_back(k);
      for (size_t at = 0; at < mine.size() && batched < max_projects;) {
        std::vector<const plan::Project*> batch;
        uint64_t end = 0;
        for (; at < mine.size() && batch.size() < 16; ++at) {
          const auto [lo, hi] = range(p->projects[mine[at]]);
          bool overlap = false;
          for (const plan::Project* q : batch)
            overlap = overlap || (range(*q).first < hi && lo < range(*q).second);
          if (overlap) break;
          batch.push_back(&p->projects[mine[at]]);
          end = std::max(end, hi);
        }
        std::vector<std::byte> want(end);
        for (const plan::Project* q : batch) {
          const spec::DestParam& dp = in.inference.params[p->dests[q->dest].param];
          ASSERT_TRUE(plan::project_cpu(
              in, *p, *q,
              [&](const plan::Project::Input& inp) {
                const int src = dp.parts.at(inp.part).src;
                core::Box b = core::Box::full(in.trainer.params[src].shape);
                return plan::Held{b, host[src].data()};
              },
              want.data(), want.size()));
        }
        auto staging = Buffer::allocate(MemoryKind::kCuda, end);
        ASSERT_TRUE(staging);
        Status st = project_cuda_batch(
            in, *p, batch,
            [&](const plan::Project& q, const plan::Project::Input& inp) {
              const int src = in.inference.params[p->dests[q.dest].param].parts.at(inp.part).src;
              return plan::Held{core::Box::full(in.trainer.params[src].shape), dev[src].data()};
            },
            staging->data(), end, scratch);
        ASSERT_TRUE(st) << name << " batch of " << batch.size() << ": " << st.message();
        const auto got = to_host(*staging, end);
        for (const plan::Project* q : batch) {
          const auto [lo, hi] = range(*q);
          ASSERT_TRUE(std::equal(got.begin() + static_cast<long>(lo),
                                 got.begin() + static_cast<long>(hi),
                                 want.begin() + static_cast<long>(lo)))
              << name << " batched project " << (q - p->projects.data()) << " of sender " << s;
        }
        batched += batch.size();
        ++batches;
      }
    }
    std::printf(
        "%s: %zu projections in %zu batches identical on GPU and CPU (singly: %llu on the "
        "fast path, %llu assembled)\n",
        name, batched, batches, static_cast<unsigned long long>(counts.fast),
        static_cast<unsigned long long>(counts.assembled));
    EXPECT_GT(batches, 0u);
  }();
  return counts;
}

TEST(ProjectCuda, WholePlansMatchTheCpuReference) {
  if (!have_gpu()) GTEST_SKIP() << (cuda_built() ? "no GPU" : "built without CUDA");
  auto tiny = spec::make_inputs(testing::tiny_trainer(), testing::tiny_inference(),
                                testing::tiny_topology(), {1}, {"t", "i", "c"});
  ASSERT_TRUE(tiny) << tiny.status().message();
  ProjectCounts all = check_plan(*tiny, "tiny", 100000);
  for (const auto& [name, scale] :
       {std::pair<const char*, int64_t>{"demo-moe", 1}, {"deepseek-v3", 64}}) {
    const char* root = std::getenv("WC_SOURCE_DIR");  // the checkout, when run elsewhere
    const std::string dir = std::string(root ? root : WC_SOURCE_DIR) + "/configs/" + name + "/";
    auto in = spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json",
                                {scale});
    ASSERT_TRUE(in) << in.status().message();
    const ProjectCounts c = check_plan(*in, name, 400);
    all.fast += c.fast;
    all.assembled += c.assembled;
  }
  // Both paths ran: whole rows on the fast one, transposes and odd shapes assembled.
  EXPECT_GT(all.fast, 0u);
  EXPECT_GT(all.assembled, 0u);
}

}  // namespace
}  // namespace weightcast::exec
