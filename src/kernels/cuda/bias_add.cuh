// Bias add after a GEMM: y[r, c] += bias[c] (Qwen2's q/k/v biases; cuBLASLt's bias epilogue
// would need the bias in the output dtype, and these are a few KB of f32 kept exact).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct BiasAddParams {
  void* y;             // [n, cols] row stride ldy, dtype F32 or BF16
  int64_t ldy;
  DType dtype;
  const float* bias;   // [cols]
  int64_t n, cols;
};

cudaError_t bias_add(const BiasAddParams& p, cudaStream_t stream);

}  // namespace gale::cuda
