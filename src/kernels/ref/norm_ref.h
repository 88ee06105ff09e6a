// Scalar reference for RMSNorm (kernels/cpu rmsnorm, kernels/cuda rmsnorm_residual and
// head_rmsnorm): the specification their tests compare against. Sums in double, one rounding
// to f32 at the end.
#pragma once
#include <cstdint>

namespace gale::ref {

// out[r, i] = w[i] * x[r, i] / sqrt(mean_i(x[r, i]²) + eps) over n rows of d (strides ldx, ldo).
// out may alias x.
void rmsnorm(const float* x, int64_t ldx, int64_t n, int64_t d, const float* w, float eps, float* out, int64_t ldo);

// The same per head, in place (Qwen3's q/k norm): x [n, n_heads * head_dim] (row stride ld),
// each head's head_dim values normalized on their own with the shared w [head_dim].
void head_rmsnorm(float* x, int64_t ld, int64_t n, int64_t n_heads, int64_t head_dim, const float* w, float eps);

}  // namespace gale::ref
