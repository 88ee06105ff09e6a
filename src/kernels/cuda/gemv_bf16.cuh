// Decode-sized products: y[M, N] (= or +=) x[M, K] · W[N, K]ᵀ for M <= 8 rows of bf16 x and bf16
// W, f32 accumulation. At these M the product is a pass over W (bandwidth-bound): one warp per
// output feature streams its W row with 16-byte loads, several in flight, and keeps the M dot
// products in registers. cuBLASLt's kernels for M = 1 reach ~75 % of copy bandwidth on an H100
// here (bench/RESULTS.md); this is the decode path's floor-chaser. Same parameters as gemm_bf16.
//
// For the smallest batches the GEMV can also normalize its input itself (GemvInput): each block
// stages RMSNorm of the f32 residual rows in shared memory before the q|k|v and gate|up
// products, which removes the RMSNorm kernel (a single block, and its launch gap) per product.
// (SiLU-and-multiply staged the same way before the down product measured slower: each of its
// 512 blocks re-read 2 x 28 KB of gate|up and ran 14,336 expf before streaming W.)
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm_lt.cuh"

namespace gale::cuda {

struct GemvInput {
  enum Kind { kPlain, kRMSNorm };
  Kind kind = kPlain;
  // kRMSNorm: p.x holds f32 rows of K values; the product's input is
  //   bf16(norm_weight[k] * (x[k] / sqrt(mean(x²) + eps)))   (rmsnorm_residual's formula).
  const float* norm_weight = nullptr;
  float eps = 0.0f;
};

// True when gemv_bf16 takes these shapes: 1 <= M <= 8, K a multiple of 8, row strides and
// pointers of x and W 16-byte aligned.
bool gemv_bf16_supported(const GemmParams& p);
// True when gemv_bf16 can apply `in` itself (M <= 4 and the staged rows within 32 KB).
bool gemv_bf16_fusable(const GemmParams& p, const GemvInput& in);

cudaError_t gemv_bf16(const GemmParams& p, cudaStream_t stream, const GemvInput& in = {});

}  // namespace gale::cuda
