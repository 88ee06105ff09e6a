#include "core/dtype.h"

#include <cmath>
#include <cstring>

namespace gale {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::F8_E5M2: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::I8: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
  }
  return "?";
}

bool dtype_from_name(std::string_view n, DType* out) {
  static const struct { std::string_view name; DType t; } table[] = {
      {"F32", DType::F32},         {"F16", DType::F16},         {"BF16", DType::BF16},
      {"F8_E4M3", DType::F8_E4M3}, {"F8_E5M2", DType::F8_E5M2}, {"I32", DType::I32},
      {"I64", DType::I64},         {"U8", DType::U8},           {"I8", DType::I8}};
  for (const auto& e : table)
    if (e.name == n) { *out = e.t; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do { man <<= 1; ++e; } while (!(man & 0x400));
      man &= 0x3ff;
      u = sign | uint32_t(127 - 15 - e) << 23 | man << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return uint16_t(sign | 0x7e00);  // NaN
  if (absu >= 0x477ff000u) return uint16_t(sign | 0x7c00); // overflow -> inf (rounding included)
  if (absu < 0x38800000u) {                                // subnormal or zero in f16
    float a;
    std::memcpy(&a, &absu, 4);
    // Scale so that the f16 subnormal unit (2^-24) becomes 1, then round to nearest even.
    float scaled = a * 16777216.0f;
    uint32_t m = uint32_t(std::nearbyint(scaled));
    return uint16_t(sign | m);
  }
  uint32_t exp = ((absu >> 23) - 127 + 15);
  uint32_t man = absu & 0x7fffff;
  uint32_t h = exp << 10 | man >> 13;
  uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // carries into exponent correctly
  return uint16_t(sign | h);
}

float f8e4m3_to_f32(uint8_t v) {
  uint32_t sign = v >> 7;
  uint32_t exp = (v >> 3) & 0xf;
  uint32_t man = v & 0x7;
  float r;
  if (exp == 0xf && man == 0x7) return std::nanf("");
  if (exp == 0) r = std::ldexp(float(man), -9);  // subnormal: man/8 * 2^-6
  else r = std::ldexp(1.0f + float(man) / 8.0f, int(exp) - 7);
  return sign ? -r : r;
}

uint8_t f32_to_f8e4m3(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint8_t sign = uint8_t((u >> 24) & 0x80);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return uint8_t(sign | 0x7f);  // NaN
  if (u >= 0x43e80000u) return uint8_t(sign | 0x7e);  // >= 464, past the midpoint to 480: saturate at 448
  if (u < 0x3c800000u) {                              // below 2^-6: subnormal steps of 2^-9 (exact product)
    float a;
    std::memcpy(&a, &u, 4);
    return uint8_t(sign | uint8_t(std::nearbyint(a * 512.0f)));  // 8 is the smallest normal, 0x08
  }
  // Normal: the f32 exponent rebiased from 127 to 7 and the mantissa rounded to 3 bits, to even;
  // a mantissa that rounds up to 8 carries into the exponent, which is the right code.
  const uint32_t r = u + 0x7ffffu + ((u >> 20) & 1u);
  return uint8_t(sign | uint8_t((r >> 20) - (120u << 3)));
}

float f8e5m2_to_f32(uint8_t v) {
  // E5M2 is the top byte of an IEEE f16.
  return f16_to_f32(uint16_t(uint16_t(v) << 8));
}

namespace {

// Element i of a tensor whose data may sit at any byte offset: safetensors aligns the data
// section, not each tensor (an f32 vector after an odd-length bf16 one is misaligned), so
// elements are read with memcpy rather than through a typed pointer.
template <class T>
T element(const void* data, size_t i) {
  T v;
  std::memcpy(&v, static_cast<const uint8_t*>(data) + i * sizeof(T), sizeof(T));
  return v;
}

}  // namespace

float load_as_f32(const void* data, DType t, size_t i) {
  switch (t) {
    case DType::F32: return element<float>(data, i);
    case DType::F16: return f16_to_f32(element<uint16_t>(data, i));
    case DType::BF16: return bf16_to_f32(element<uint16_t>(data, i));
    case DType::F8_E4M3: return f8e4m3_to_f32(element<uint8_t>(data, i));
    case DType::F8_E5M2: return f8e5m2_to_f32(element<uint8_t>(data, i));
    case DType::I32: return float(element<int32_t>(data, i));
    case DType::I64: return float(element<int64_t>(data, i));
    case DType::U8: return float(element<uint8_t>(data, i));
    case DType::I8: return float(element<int8_t>(data, i));
  }
  return 0.0f;
}

}  // namespace gale
