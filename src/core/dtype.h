// Element types of stored tensors and their scalar conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace gale {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, F8_E5M2, I32, I64, U8, I8 };

inline bool is_fp8(DType t) { return t == DType::F8_E4M3 || t == DType::F8_E5M2; }
// The element types weights may be stored in (16/32-bit floats and FP8).
inline bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || is_fp8(t); }

// Size of one element in bytes.
size_t dtype_size(DType t);
// Canonical safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype string; returns false for unknown or unsupported ones.
bool dtype_from_name(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even, NaN preserved (matches torch's float -> bfloat16).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// OCP FP8 formats as torch.float8_e4m3fn (no infinities, 0x7f/0xff NaN) and torch.float8_e5m2.
float f8e4m3_to_f32(uint8_t v);
float f8e5m2_to_f32(uint8_t v);
// The largest finite E4M3 value: an FP8 scale is amax / kF8E4M3Max.
inline constexpr float kF8E4M3Max = 448.0f;
// Round to nearest even, saturating at ±kF8E4M3Max (quantizers clamp to the format's range);
// NaN to 0x7f with its sign.
uint8_t f32_to_f8e4m3(float f);

// Reads element i of a typed buffer as float (reference / slow paths only).
float load_as_f32(const void* data, DType t, size_t i);

}  // namespace gale
