// Projection throughput, GPU vs CPU, in one run: BF16 -> FP8 e4m3 with 128x128 block scales on
// Kimi-K2-sized expert weights (8 experts x 2048 x 7168), the step that bounds the FP8 demo on the
// CPU (perf/RESULTS.md, e2e_bench). CPU: the reference projection (BF16 -> float, then
// plan::quantize_blocks_cpu) on one core; GPU: exec::cuda_quantize_blocks on data already in
// device memory, as the GPU executor will run it. Bytes are compared before anything is timed.
// Needs a GPU (exits 77 with the reason otherwise): run it through scripts/gpu-tests.sh's way.
//   project_bench [EXPERTS]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "harness.h"
#include "weightcast/core/dtype.h"
#include "weightcast/exec/cuda_project.h"
#include "weightcast/exec/memory.h"
#include "weightcast/plan/project.h"

using namespace weightcast;  // NOLINT

int main(int argc, char** argv) {
  if (!exec::cuda_built() || exec::cuda_devices() == 0) {
    std::printf("project_bench: skipped: %s\n",
                exec::cuda_built() ? "no GPU on this machine" : "built without CUDA");
    return 77;
  }
  const int64_t lead = argc > 1 ? std::atoll(argv[1]) : 8, R = 2048, C = 7168, B = 128;
  const size_t n = static_cast<size_t>(lead * R * C),
               ns = static_cast<size_t>(lead * (R / B) * (C / B));
  std::vector<uint16_t> src(n);
  uint32_t s = 12345;
  for (auto& v : src) {
    s = s * 1664525u + 1013904223u;
    v = core::float_to_bf16(static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) * 3e-8f);
  }
  std::vector<float> x(n);
  std::vector<std::byte> out(n), scales(ns * 4);
  auto cpu = [&] {
    for (size_t i = 0; i < n; ++i) x[i] = core::bf16_to_float(src[i]);
    plan::quantize_blocks_cpu(x.data(), lead, R, C, B, B, core::DType::kFP8E4M3, out.data(),
                              scales.data());
  };
  auto dsrc = exec::Buffer::allocate(exec::MemoryKind::kCuda, n * 2);
  auto dout = exec::Buffer::allocate(exec::MemoryKind::kCuda, n);
  auto dsc = exec::Buffer::allocate(exec::MemoryKind::kCuda, ns * 4);
  if (!dsrc || !dout || !dsc || !dsrc->copy_from_host(src.data(), n * 2)) {
    std::printf("project_bench: device allocation failed\n");
    return 1;
  }
  auto gpu = [&] {
    Status st = exec::cuda_quantize_blocks(dsrc->data(), core::DType::kBF16, lead, R, C, B, B,
                                           core::DType::kFP8E4M3, dout->data(),
                                           reinterpret_cast<float*>(dsc->data()));
    if (!st) {
      std::printf("project_bench: %s\n", st.message().c_str());
      std::exit(1);
    }
  };
  cpu();
  gpu();
  std::vector<std::byte> gout(n), gsc(ns * 4);
  if (!dout->copy_to_host(gout.data(), n) || !dsc->copy_to_host(gsc.data(), ns * 4) ||
      gout != out || gsc != scales) {
    std::printf("project_bench: GPU and CPU projections differ\n");
    return 1;
  }
  double tc = 1e9, tg = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = perf::now_s();
    cpu();
    tc = std::min(tc, perf::now_s() - t0);
  }
  for (int rep = 0; rep < 10; ++rep) {
    const double t0 = perf::now_s();
    gpu();
    tg = std::min(tg, perf::now_s() - t0);
  }
  const double gb = static_cast<double>(n) * 2 / 1e9;  // BF16 bytes in
  std::printf(
      "project_bench: BF16 -> FP8 e4m3, 128x128 block scales, %lld x %lld x %lld (%.2f GB in), "
      "bytes identical on GPU and CPU\n",
      static_cast<long long>(lead), static_cast<long long>(R), static_cast<long long>(C), gb);
  std::printf("  CPU (1 core): %.1f ms = %.2f GB/s;  GPU: %.3f ms = %.1f GB/s\n", tc * 1e3, gb / tc,
              tg * 1e3, gb / tg);
  perf::ratio("GPU / CPU projection throughput", gb / tg, gb / tc, "GB/s",
              "the GPU executor's projection must not bound a step");
  return 0;
}
