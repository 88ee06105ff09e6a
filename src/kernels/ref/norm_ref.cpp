#include "kernels/ref/norm_ref.h"

#include <cmath>

namespace gale::ref {

void rmsnorm(const float* x, int64_t ldx, int64_t n, int64_t d, const float* w, float eps, float* out, int64_t ldo) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * ldx;
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += double(xr[i]) * double(xr[i]);
    const double inv = 1.0 / std::sqrt(ss / double(d) + double(eps));
    float* o = out + r * ldo;
    for (int64_t i = 0; i < d; ++i) o[i] = float(double(w[i]) * double(xr[i]) * inv);
  }
}

void head_rmsnorm(float* x, int64_t ld, int64_t n, int64_t n_heads, int64_t head_dim, const float* w, float eps) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < n_heads; ++h) {
      float* head = x + r * ld + h * head_dim;
      rmsnorm(head, head_dim, 1, head_dim, w, eps, head, head_dim);
    }
}

}  // namespace gale::ref
