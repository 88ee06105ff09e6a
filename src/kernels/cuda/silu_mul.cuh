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
  // 0: gate and up are the two pointers above. 4: gate|up rows interleaved in groups of four
  // (gate 4b..4b+3 at columns 8b..8b+3 of `gate`'s rows, up 4b..4b+3 at 8b+4..8b+7; `up` unused),
  // the layout of the CUDA backend's fused gate|up weights (see gemv_bf16.cuh).
  int64_t group = 0;
};

cudaError_t silu_mul(const SiluMulParams& p, cudaStream_t stream);

}  // namespace gale::cuda

#ifdef __CUDACC__
namespace gale::cuda {
// silu(g) * u in f32, the one formula of every SiLU-mul path (this op's kernels and the gate|up
// GEMV's epilogue), so that fused and unfused paths round alike. expf (not __expf) keeps it
// within a few ulps of the CPU kernel.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }
}  // namespace gale::cuda
#endif  // __CUDACC__
