#include "kernels/ref/matmul_ref.h"

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
