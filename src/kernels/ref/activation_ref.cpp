#include "kernels/ref/activation_ref.h"

#include <cmath>
#include <vector>

#include "kernels/ref/matmul_ref.h"

namespace gale::ref {

void silu_mul(const float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t n, int64_t d, float* out,
              int64_t ldo) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < d; ++i) {
      const double g = gate[r * ldg + i];
      out[r * ldo + i] = float(g / (1.0 + std::exp(-g)) * double(up[r * ldu + i]));
    }
}

void swiglu(const float* x, int64_t ldx, int64_t n, int64_t hidden, int64_t inter, const void* gate, const void* up,
            const void* down, DType wdt, float* y, int64_t ldy, bool accumulate) {
  std::vector<float> g(size_t(n * inter)), u(size_t(n * inter));
  matmul(x, ldx, n, hidden, gate, wdt, inter, nullptr, g.data(), inter);
  matmul(x, ldx, n, hidden, up, wdt, inter, nullptr, u.data(), inter);
  silu_mul(g.data(), inter, u.data(), inter, n, inter, g.data(), inter);
  matmul(g.data(), inter, n, inter, down, wdt, hidden, nullptr, y, ldy, accumulate);
}

}  // namespace gale::ref
