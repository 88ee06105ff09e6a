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

}  // namespace gale::ref
