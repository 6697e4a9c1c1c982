// Scalar conversions. The mini-float encoders share one rounding routine: round to nearest even
// on the exact float value, then each format decides what overflow means (inf or saturation).
#include "weightcast/core/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>

namespace weightcast::core {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kBF16:
      return "bf16";
    case DType::kFP16:
      return "fp16";
    case DType::kFP32:
      return "fp32";
    case DType::kFP8E4M3:
      return "fp8_e4m3";
    case DType::kFP8E5M2:
      return "fp8_e5m2";
    case DType::kInt8:
      return "int8";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view s) {
  for (DType t :
       {DType::kBF16, DType::kFP16, DType::kFP32, DType::kFP8E4M3, DType::kFP8E5M2, DType::kInt8}) {
    if (s == dtype_name(t)) return t;
  }
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16") return DType::kFP16;
  if (s == "float32") return DType::kFP32;
  if (s == "float8_e4m3fn") return DType::kFP8E4M3;
  if (s == "float8_e5m2") return DType::kFP8E5M2;
  return std::nullopt;
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kBF16:
    case DType::kFP16:
      return 2;
    case DType::kFP32:
      return 4;
    case DType::kFP8E4M3:
    case DType::kFP8E5M2:
    case DType::kInt8:
      return 1;
  }
  return 0;
}

float bf16_to_float(uint16_t v) { return std::bit_cast<float>(uint32_t{v} << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

namespace {

// Magnitude encoding (no sign) of a finite non-negative value into a format with `mbits` mantissa
// bits and exponent `bias`, rounding to nearest even. The result may exceed the format's largest
// finite code: the caller clamps.
uint32_t encode_magnitude(float a, int mbits, int bias) {
  const int min_normal_exp = 1 - bias;
  if (a == 0.0f) return 0;
  const uint32_t u = std::bit_cast<uint32_t>(a);
  const int e = static_cast<int>(u >> 23) - 127;
  if (e < min_normal_exp) {  // subnormal in the target: multiples of 2^(min_normal_exp - mbits)
    return static_cast<uint32_t>(std::nearbyint(std::ldexp(a, mbits - min_normal_exp)));
  }
  // Normal: keep the top `mbits` of the float's 23-bit mantissa, rounding to nearest even on
  // the bits dropped; a carry out of the mantissa bumps the exponent field, as it should.
  const uint32_t m = u & 0x7fffff;
  const int shift = 23 - mbits;
  const uint32_t r = (m + ((1u << (shift - 1)) - 1) + ((m >> shift) & 1)) >> shift;
  return (static_cast<uint32_t>(e + bias) << mbits) + r;
}

float decode_magnitude(uint32_t code, int mbits, int bias) {
  const uint32_t field = code >> mbits;
  const uint32_t m = code & ((1u << mbits) - 1);
  if (field == 0) return std::ldexp(static_cast<float>(m), 1 - bias - mbits);
  return std::ldexp(1.0f + static_cast<float>(m) / static_cast<float>(1 << mbits),
                    static_cast<int>(field) - bias);
}

}  // namespace

float fp16_to_float(uint16_t v) {
  const float sign = (v & 0x8000) ? -1.0f : 1.0f;
  const uint32_t mag = v & 0x7fff;
  if ((mag >> 10) == 0x1f) return (mag & 0x3ff) ? NAN : sign * INFINITY;
  return sign * decode_magnitude(mag, 10, 15);
}

uint16_t float_to_fp16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7e00;
  const float a = std::fabs(f);
  if (std::isinf(a)) return sign | 0x7c00;
  uint32_t code = encode_magnitude(a, 10, 15);
  if (code >= 0x7c00) code = 0x7c00;  // overflow rounds to infinity, as IEEE does
  return static_cast<uint16_t>(sign | code);
}

float fp8e4m3_to_float(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const uint32_t mag = v & 0x7f;
  if (mag == 0x7f) return NAN;  // e4m3fn: no infinities, one NaN pattern per sign
  return sign * decode_magnitude(mag, 3, 7);
}

uint8_t float_to_fp8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  uint32_t code = std::isinf(a) ? 0x7e : encode_magnitude(a, 3, 7);
  if (code > 0x7e) code = 0x7e;  // saturate at 448 instead of producing NaN
  return static_cast<uint8_t>(sign | code);
}

float fp8e5m2_to_float(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const uint32_t mag = v & 0x7f;
  if ((mag >> 2) == 0x1f) return (mag & 3) ? NAN : sign * INFINITY;
  return sign * decode_magnitude(mag, 2, 15);
}

uint8_t float_to_fp8e5m2(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  uint32_t code = std::isinf(a) ? 0x7b : encode_magnitude(a, 2, 15);
  if (code > 0x7b) code = 0x7b;  // saturate at 57344
  return static_cast<uint8_t>(sign | code);
}

float load_as_float(DType t, const std::byte* p) {
  switch (t) {
    case DType::kBF16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return bf16_to_float(v);
    }
    case DType::kFP16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return fp16_to_float(v);
    }
    case DType::kFP32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::kFP8E4M3:
      return fp8e4m3_to_float(static_cast<uint8_t>(*p));
    case DType::kFP8E5M2:
      return fp8e5m2_to_float(static_cast<uint8_t>(*p));
    case DType::kInt8:
      return static_cast<float>(static_cast<int8_t>(*p));
  }
  return 0.0f;
}

void store_from_float(DType t, float f, std::byte* p) {
  switch (t) {
    case DType::kBF16: {
      const uint16_t v = float_to_bf16(f);
      std::memcpy(p, &v, 2);
      return;
    }
    case DType::kFP16: {
      const uint16_t v = float_to_fp16(f);
      std::memcpy(p, &v, 2);
      return;
    }
    case DType::kFP32:
      std::memcpy(p, &f, 4);
      return;
    case DType::kFP8E4M3:
      *p = static_cast<std::byte>(float_to_fp8e4m3(f));
      return;
    case DType::kFP8E5M2:
      *p = static_cast<std::byte>(float_to_fp8e5m2(f));
      return;
    case DType::kInt8: {
      const float c = std::fmin(127.0f, std::fmax(-128.0f, std::nearbyint(f)));
      *p = static_cast<std::byte>(static_cast<int8_t>(c));
      return;
    }
  }
}

void convert(DType from, const std::byte* src, DType to, std::byte* dst, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  const size_t fs = dtype_size(from), ts = dtype_size(to);
  for (size_t i = 0; i < n; ++i)
    store_from_float(to, load_as_float(from, src + i * fs), dst + i * ts);
}

}  // namespace weightcast::core
