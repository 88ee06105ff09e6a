// Per-head RMSNorm in place (Qwen3's q/k norm before RoPE): for token t and head h,
//   x[t, h*head_dim : (h+1)*head_dim] = weight * x / sqrt(mean(x²) + eps)
// over rows of stride ld (q, k and v may be column ranges of one fused projection output).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct HeadRMSNormParams {
  void* x;              // [n_tokens, n_heads * head_dim] row stride ld, dtype F32 or BF16
  int64_t ld;
  DType dtype;
  const float* weight;  // [head_dim]
  float eps;
  int64_t n_tokens, n_heads, head_dim;
};

cudaError_t head_rmsnorm(const HeadRMSNormParams& p, cudaStream_t stream);

}  // namespace gale::cuda
