// Projection throughput against the device-to-device copy, in one run (issue 13's target: the
// FP8 128x128 block quantization and the casts at >= 85% of the copy's bandwidth, counting bytes
// read and written). On Kimi-K2-sized expert weights (EXPERTS x 2048 x 7168 BF16):
//   copy     cudaMemcpyAsync device to device of the BF16 bytes (read + written)
//   quant    exec::cuda_quantize_blocks BF16 -> FP8 e4m3 with 128x128 FP32 scales
//   cast     exec::cuda_cast BF16 -> FP8 e4m3, and FP32 -> BF16 (an FP32 master copy)
// and, for scale, the CPU reference quantization on one core. Every GPU output is compared byte
// for byte with the CPU reference before anything is timed. GPU times are CUDA-event times of
// back-to-back launches (best of several rounds). Needs a GPU (exits 77 with the reason).
//   project_bench [EXPERTS]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "harness.h"
#include "weightcast/core/dtype.h"
#include "weightcast/exec/cuda_project.h"
#include "weightcast/exec/memory.h"
#include "weightcast/plan/project.h"

using namespace weightcast;  // NOLINT

namespace {

[[noreturn]] void die(const char* what) {
  std::printf("project_bench: %s\n", what);
  std::exit(1);
}
void check(Status st) {
  if (!st) die(st.message().c_str());
}

// Seconds per call of `f` (launches only), best of 5 rounds of `reps` calls, by CUDA events on
// the calling thread's default stream (where the projections run).
double gpu_time(const std::function<void()>& f, int reps = 10) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  f();
  float best = 1e30f;
  for (int round = 0; round < 5; ++round) {
    cudaEventRecord(a, cudaStreamPerThread);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(b, cudaStreamPerThread);
    if (cudaEventSynchronize(b) != cudaSuccess) die("cudaEventSynchronize");
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    best = std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best * 1e-3 / reps;
}

}  // namespace

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
  std::vector<float> f32(n);
  uint32_t s = 12345;
  for (size_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    f32[i] = static_cast<float>(static_cast<int32_t>(s >> 8) - (1 << 23)) * 3e-8f;
    src[i] = core::float_to_bf16(f32[i]);
  }
  // CPU references.
  std::vector<float> x(n);
  std::vector<std::byte> out(n), scales(ns * 4), cast8(n), cast16(n * 2);
  auto cpu = [&] {
    for (size_t i = 0; i < n; ++i) x[i] = core::bf16_to_float(src[i]);
    plan::quantize_blocks_cpu(x.data(), lead, R, C, B, B, core::DType::kFP8E4M3, out.data(),
                              scales.data());
  };
  cpu();
  core::convert(core::DType::kBF16, reinterpret_cast<const std::byte*>(src.data()),
                core::DType::kFP8E4M3, cast8.data(), n);
  core::convert(core::DType::kFP32, reinterpret_cast<const std::byte*>(f32.data()),
                core::DType::kBF16, cast16.data(), n);

  auto alloc = [](uint64_t bytes) {
    auto b = exec::Buffer::allocate(exec::MemoryKind::kCuda, bytes);
    if (!b) die(b.status().message().c_str());
    return std::move(b).value();
  };
  exec::Buffer dsrc = alloc(n * 2), df32 = alloc(n * 4), dout = alloc(n), dsc = alloc(ns * 4),
               d16 = alloc(n * 2), dcopy = alloc(n * 2);
  check(dsrc.copy_from_host(src.data(), n * 2));
  check(df32.copy_from_host(f32.data(), n * 4));
  auto quant = [&] {
    check(exec::cuda_quantize_blocks(dsrc.data(), core::DType::kBF16, lead, R, C, B, B,
                                     core::DType::kFP8E4M3, dout.data(),
                                     reinterpret_cast<float*>(dsc.data()), false));
  };
  auto cast_fp8 = [&] {
    check(exec::cuda_cast(dsrc.data(), core::DType::kBF16, dout.data(), core::DType::kFP8E4M3, n,
                          false));
  };
  auto cast_bf16 = [&] {
    check(
        exec::cuda_cast(df32.data(), core::DType::kFP32, d16.data(), core::DType::kBF16, n, false));
  };
  auto copy = [&] {
    if (cudaMemcpyAsync(dcopy.data(), dsrc.data(), n * 2, cudaMemcpyDeviceToDevice,
                        cudaStreamPerThread) != cudaSuccess)
      die("cudaMemcpyAsync");
  };
  // Bytes first.
  std::vector<std::byte> g(n), gs(ns * 4), g16(n * 2);
  quant();
  check(dout.copy_to_host(g.data(), n));
  check(dsc.copy_to_host(gs.data(), ns * 4));
  if (g != out || gs != scales) die("GPU and CPU block quantizations differ");
  cast_fp8();
  check(dout.copy_to_host(g.data(), n));
  if (g != cast8) die("GPU and CPU BF16 -> FP8 casts differ");
  cast_bf16();
  check(d16.copy_to_host(g16.data(), n * 2));
  if (g16 != cast16) die("GPU and CPU FP32 -> BF16 casts differ");

  double tc = 1e9;
  for (int rep = 0; rep < 2; ++rep) {
    const double t0 = perf::now_s();
    cpu();
    tc = std::min(tc, perf::now_s() - t0);
  }
  const double t_copy = gpu_time(copy), t_quant = gpu_time(quant), t_c8 = gpu_time(cast_fp8),
               t_c16 = gpu_time(cast_bf16);
  const double N = static_cast<double>(n);
  const double copy_gbps = 2 * 2 * N / t_copy / 1e9;  // read + written
  const double quant_gbps = (2 * N + N + 4.0 * static_cast<double>(ns)) / t_quant / 1e9;
  const double c8_gbps = 3 * N / t_c8 / 1e9, c16_gbps = 6 * N / t_c16 / 1e9;
  std::printf(
      "project_bench: %lld x %lld x %lld BF16 (%.2f GB in), GPU bytes identical to the CPU "
      "reference\n",
      static_cast<long long>(lead), static_cast<long long>(R), static_cast<long long>(C),
      2 * N / 1e9);
  std::printf(
      "  GB/s read + written: copy %.0f (%.3f ms), quant %.0f (%.3f ms), cast bf16->fp8 %.0f "
      "(%.3f ms), cast fp32->bf16 %.0f (%.3f ms); CPU quant on 1 core %.2f GB/s of BF16 in\n",
      copy_gbps, t_copy * 1e3, quant_gbps, t_quant * 1e3, c8_gbps, t_c8 * 1e3, c16_gbps,
      t_c16 * 1e3, 2 * N / tc / 1e9);
  perf::ratio("FP8 128x128 quant vs D2D copy", quant_gbps, copy_gbps, "GB/s", "target >= 0.85");
  perf::ratio("cast bf16->fp8 vs D2D copy", c8_gbps, copy_gbps, "GB/s", "target >= 0.85");
  perf::ratio("cast fp32->bf16 vs D2D copy", c16_gbps, copy_gbps, "GB/s", "target >= 0.85");
  perf::ratio("GPU quant vs CPU quant (1 core)", 2 * N / t_quant / 1e9, 2 * N / tc / 1e9, "GB/s",
              "BF16 in");
  return 0;
}
