// RMSNorm fused with the residual add (the pre-norm of every block):
//   residual[r, :] += x[r, :]                      (only when x is given)
//   out[r, :] = weight * residual[r, :] / sqrt(mean(residual[r, :]²) + eps)
// With x == nullptr it is a plain RMSNorm of `residual` (first layer, q/k norm, final norm),
// and residual is not written.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct RMSNormParams {
  const void* x;        // [n, d] row stride ldx, x_dtype (F32/BF16); nullptr = no add
  DType x_dtype;
  int64_t ldx;
  void* residual;       // [n, d] row stride ldr, residual_dtype (F32/BF16); updated in place
  DType residual_dtype;
  int64_t ldr;
  const float* weight;  // [d]
  float eps;
  void* out;            // [n, d] row stride ldo, out_dtype (F32/BF16); may alias residual if no x
  DType out_dtype;
  int64_t ldo;
  int64_t n, d;
};

cudaError_t rmsnorm_residual(const RMSNormParams& p, cudaStream_t stream);

}  // namespace gale::cuda
