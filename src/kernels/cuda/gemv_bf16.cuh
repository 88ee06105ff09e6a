// Decode-sized products: y[M, N] (= or +=) x[M, K] · W[N, K]ᵀ for M <= 8 rows of bf16 x and bf16
// W, f32 accumulation. At these M the product is a pass over W (bandwidth-bound): one warp per
// output feature streams its W row with 16-byte loads, several in flight, and keeps the M dot
// products in registers. cuBLASLt's kernels for M = 1 reach ~75 % of copy bandwidth on an H100
// here (bench/RESULTS.md); this is the decode path's floor-chaser. Same parameters as gemm_bf16.
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm_lt.cuh"

namespace gale::cuda {

// True when gemv_bf16 takes these shapes: 1 <= M <= 8, K a multiple of 8, row strides and
// pointers of x and W 16-byte aligned.
bool gemv_bf16_supported(const GemmParams& p);

cudaError_t gemv_bf16(const GemmParams& p, cudaStream_t stream);

}  // namespace gale::cuda
