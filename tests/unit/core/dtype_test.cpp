// Scalar conversions: exhaustive round trips, saturation, and FP8 rounding checked against a
// brute-force nearest-code search that shares nothing with the encoder.
#include "weightcast/core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

namespace weightcast::core {
namespace {

TEST(DType, NamesRoundTrip) {
  for (DType t :
       {DType::kBF16, DType::kFP16, DType::kFP32, DType::kFP8E4M3, DType::kFP8E5M2, DType::kInt8})
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
  EXPECT_EQ(parse_dtype("float8_e4m3fn"), DType::kFP8E4M3);
  EXPECT_FALSE(parse_dtype("fp4").has_value());
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kFP8E4M3), 1u);
}

TEST(DType, Fp8E4M3KnownCodes) {
  EXPECT_EQ(fp8e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(fp8e4m3_to_float(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(fp8e4m3_to_float(0x7f)));
  EXPECT_EQ(float_to_fp8e4m3(1.0f), 0x38);
  EXPECT_EQ(float_to_fp8e4m3(-2.0f), 0xc0);
}

TEST(DType, Fp8E4M3Saturates) {
  EXPECT_EQ(float_to_fp8e4m3(448.0f), 0x7e);
  EXPECT_EQ(float_to_fp8e4m3(464.0f), 0x7e);  // torch would give NaN here; we saturate
  EXPECT_EQ(float_to_fp8e4m3(1e9f), 0x7e);
  EXPECT_EQ(float_to_fp8e4m3(INFINITY), 0x7e);
  EXPECT_EQ(float_to_fp8e4m3(-1e9f), 0xfe);
  EXPECT_EQ(float_to_fp8e4m3(NAN), 0x7f);
}

TEST(DType, Fp8E4M3RoundTripsEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    const float f = fp8e4m3_to_float(static_cast<uint8_t>(c));
    EXPECT_EQ(float_to_fp8e4m3(f), c == 0x80 ? 0x80 : c) << c;
  }
}

// Nearest finite e4m3 value by exhaustive search; ties go to the even code (even mantissa).
uint8_t nearest_e4m3(float f) {
  int best = -1;
  float best_d = INFINITY;
  for (int c = 0; c < 0x7f; ++c) {
    const float v = fp8e4m3_to_float(static_cast<uint8_t>(c));
    const float d = std::fabs(std::fabs(f) - v);
    if (d < best_d || (d == best_d && (c % 2) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(f) ? 0x80 : 0));
}

TEST(DType, Fp8E4M3MatchesBruteForceNearest) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 9);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::ldexp(mant(rng), ex(rng));
    if (std::fabs(f) > 448.0f) continue;
    ASSERT_EQ(float_to_fp8e4m3(f), nearest_e4m3(f)) << f;
  }
  // Exact ties between neighbours: 1 + 1/16 lies halfway between 1 and 1.125 -> even (1.0).
  EXPECT_EQ(float_to_fp8e4m3(1.0625f), 0x38);
  EXPECT_EQ(float_to_fp8e4m3(1.1875f), 0x3a);  // halfway 1.125/1.25 -> 1.25 (even mantissa 2)
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  for (uint32_t c = 0; c < 65536; c += 7) {
    const float f = bf16_to_float(static_cast<uint16_t>(c));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16(f), c);
  }
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(DType, Fp16RoundTripsEveryCode) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const float f = fp16_to_float(static_cast<uint16_t>(c));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_fp16(f), c) << c;
  }
  EXPECT_EQ(float_to_fp16(70000.0f), 0x7c00);  // overflow -> inf, as IEEE
}

TEST(DType, Fp8E5M2) {
  EXPECT_EQ(fp8e5m2_to_float(0x3c), 1.0f);
  EXPECT_EQ(float_to_fp8e5m2(1e9f), 0x7b);
  EXPECT_EQ(fp8e5m2_to_float(0x7b), 57344.0f);
  for (int c = 0; c < 0x7b; ++c)
    EXPECT_EQ(float_to_fp8e5m2(fp8e5m2_to_float(static_cast<uint8_t>(c))), c);
}

TEST(DType, ConvertBuffers) {
  const float in[4] = {1.0f, -0.5f, 3.0f, 1000.0f};
  std::byte bf[8], f8[4];
  convert(DType::kFP32, reinterpret_cast<const std::byte*>(in), DType::kBF16, bf, 4);
  convert(DType::kBF16, bf, DType::kFP8E4M3, f8, 4);
  EXPECT_EQ(static_cast<uint8_t>(f8[0]), 0x38);
  EXPECT_EQ(static_cast<uint8_t>(f8[3]), 0x7e);  // 1000 saturates
  std::byte same[8];
  convert(DType::kBF16, bf, DType::kBF16, same, 4);
  EXPECT_EQ(std::memcmp(bf, same, 8), 0);
  EXPECT_EQ(quant_max(DType::kFP8E4M3), 448.0f);
}

}  // namespace
}  // namespace weightcast::core
