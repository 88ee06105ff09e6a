// SwiGLU activation: out[r, i] = silu(gate[r, i]) · up[r, i], silu(g) = g / (1 + e^-g).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct SiluMulParams {
  const void* gate;  // [n, d] row stride ldg, in_dtype
  int64_t ldg;
  const void* up;    // [n, d] row stride ldu, in_dtype (gate and up may be halves of one gate_up row)
  int64_t ldu;
  DType in_dtype;    // F32 or BF16
  void* out;         // [n, d] row stride ldo, out_dtype (F32/BF16); may alias gate
  int64_t ldo;
  DType out_dtype;
  int64_t n, d;
};

cudaError_t silu_mul(const SiluMulParams& p, cudaStream_t stream);

}  // namespace gale::cuda
