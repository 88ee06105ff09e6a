#include "kernels/ref/matmul_ref.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace gale::ref {

void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k)
        acc += double(x[m * ldx + k]) * double(load_as_f32(W, wdt, size_t(n * K + k)));
      if (bias) acc += double(bias[n]);
      if (accumulate) acc += double(y[m * ldy + n]);
      y[m * ldy + n] = float(acc);
    }
  }
}

void matmul_scaled(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
                   const float* s, int64_t srows, int64_t scols, int64_t sld, const float* bias, float* y,
                   int64_t ldy, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const float w = load_as_f32(W, wdt, size_t(n * K + k)) * s[(n / srows) * sld + k / scols];
        acc += double(x[m * ldx + k]) * double(w);
      }
      if (bias) acc += double(bias[n]);
      if (accumulate) acc += double(y[m * ldy + n]);
      y[m * ldy + n] = float(acc);
    }
  }
}

// Written from the definition rather than with core's bit trick: the two bf16 neighbours of x
// (its bits truncated to the top 16, and the next value away from zero), the nearer one, on a
// tie the one with an even last significand bit. Past the largest finite bf16 the next value
// is 2^128, which is where IEEE rounding puts the threshold to infinity.
float round_bf16(float x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t lo_bits = u & 0xffff0000u;
  const uint32_t hi_bits = lo_bits + 0x10000u;  // next magnitude up (same sign)
  auto value = [](uint32_t b) {
    if ((b & 0x7fffffffu) == 0x7f800000u) return std::copysign(std::ldexp(1.0, 128), double(b >> 31 ? -1 : 1));
    float f;
    std::memcpy(&f, &b, 4);
    return double(f);
  };
  const double dlo = std::fabs(double(x) - value(lo_bits)), dhi = std::fabs(double(x) - value(hi_bits));
  uint32_t r = dlo < dhi ? lo_bits : dhi < dlo ? hi_bits : ((lo_bits >> 16) & 1u) ? hi_bits : lo_bits;
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

void matmul_bf16x(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
                  const float* bias, float* y, int64_t ldy, bool accumulate) {
  std::vector<float> xr(size_t(M) * size_t(K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xr[size_t(m * K + k)] = round_bf16(x[m * ldx + k]);
  matmul(xr.data(), K, M, K, W, wdt, N, bias, y, ldy, accumulate);
}

float int_weight_ref(const uint8_t* codes, int bits, int64_t K, const float* scale, const uint8_t* zero,
                     int64_t group, int64_t n, int64_t k) {
  const int64_t spr = group > 0 ? (K + group - 1) / group : 1;
  const int64_t i = n * spr + (group > 0 ? k / group : 0);
  int q, z = 0;
  if (bits == 8) {
    q = int(int8_t(codes[n * K + k]));
  } else {
    const uint8_t b = codes[n * (K / 2) + k / 2];
    q = k % 2 == 0 ? b & 0xf : b >> 4;
    z = zero ? int(zero[i]) : 8;
  }
  return float(q - z) * scale[i];
}

void matmul_int(const float* x, int64_t ldx, int64_t M, int64_t K, const uint8_t* codes, int bits, int64_t N,
                const float* scale, const uint8_t* zero, int64_t group, const int32_t* in_perm, const float* bias,
                float* y, int64_t ldy, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const float xv = x[m * ldx + (in_perm ? in_perm[k] : k)];
        acc += double(xv) * double(int_weight_ref(codes, bits, K, scale, zero, group, n, k));
      }
      if (bias) acc += double(bias[n]);
      if (accumulate) acc += double(y[m * ldy + n]);
      y[m * ldy + n] = float(acc);
    }
  }
}

}  // namespace gale::ref
