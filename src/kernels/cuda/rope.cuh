// RoPE in HF's "rotate_half" layout, applied in place to q and (optionally) k in one launch.
// The frequencies (all scaling types) are computed on the host by model/rope.cpp; this kernel
// only rotates: for i < rot_dim/2, (a, b) = (x[i], x[i + rot_dim/2]) becomes
// (a·cos[i] − b·sin[i], b·cos[i] + a·sin[i]); entries past rot_dim are left alone.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct RopeParams {
  void* q;              // [n_tokens, n_q_heads, head_dim] row stride ldq, dtype
  int64_t ldq, n_q_heads;
  void* k;              // [n_tokens, n_k_heads, head_dim] row stride ldk, dtype; may be nullptr
  int64_t ldk, n_k_heads;
  DType dtype;          // F32 or BF16
  int64_t n_tokens, head_dim, rot_dim;  // rot_dim even, <= head_dim
  const float* cos;     // [n_tokens, rot_dim / 2]
  const float* sin;     // [n_tokens, rot_dim / 2]
};

cudaError_t rope_apply(const RopeParams& p, cudaStream_t stream);

#ifdef __CUDACC__
// The rotation of one pair (a = dim i, b = dim i + rot_dim / 2) by angle (c = cos, s = sin),
// with the roundings spelled out so that every kernel that rotates (rope, rope_kv_write, the
// q|k|v GEMV's epilogue) gives the same bits whatever the compiler contracts.
__device__ __forceinline__ float2 rope_rotate(float a, float b, float c, float s) {
  return {__fmaf_rn(a, c, -__fmul_rn(b, s)), __fmaf_rn(b, c, __fmul_rn(a, s))};
}
#endif

}  // namespace gale::cuda
