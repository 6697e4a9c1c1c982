// Element types and the scalar conversions every projection uses (BF16/FP16 <-> FP32, FP8 e4m3
// with saturation). One place, so the planner's executor and the verifier's reference agree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace weightcast::core {

enum class DType : uint8_t { kBF16, kFP16, kFP32, kFP8E4M3, kFP8E5M2, kInt8 };

std::string_view dtype_name(DType t);
std::optional<DType> parse_dtype(std::string_view s);
size_t dtype_size(DType t);

float bf16_to_float(uint16_t v);
uint16_t float_to_bf16(float f);  // round to nearest even; NaN stays NaN
float fp16_to_float(uint16_t v);
uint16_t float_to_fp16(float f);  // round to nearest even, overflow to inf
float fp8e4m3_to_float(uint8_t v);
uint8_t float_to_fp8e4m3(float f);  // round to nearest even, saturate at +-448 (no NaN from finite)
float fp8e5m2_to_float(uint8_t v);
uint8_t float_to_fp8e5m2(float f);  // round to nearest even, saturate at +-57344

inline constexpr float kFp8E4M3Max = 448.0f;
inline constexpr float kFp8E5M2Max = 57344.0f;
// Largest finite value of a quantization target (the divisor of absmax in block scales).
inline float quant_max(DType t) { return t == DType::kFP8E5M2 ? kFp8E5M2Max : kFp8E4M3Max; }

float load_as_float(DType t, const std::byte* p);
void store_from_float(DType t, float f, std::byte* p);

// Converts n elements; same-type conversion is a memcpy.
void convert(DType from, const std::byte* src, DType to, std::byte* dst, size_t n);

}  // namespace weightcast::core
