// bf16 GEMM through cuBLASLt: y[M, N] (= or +=) x[M, K] · W[N, K]ᵀ, f32 accumulation.
// W is a weight in its stored [out_features, in_features] layout, as in kernels/cpu/matmul.h.
// A GemmContext owns the cuBLASLt handle, one workspace and a cache of (layouts, algorithm)
// per shape, so the heuristic query runs once per shape, not per call. One context per stream
// (the workspace is shared by its calls); not thread-safe.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct GemmContext;

struct GemmParams {
  const void* x;      // [M, K] bf16, row stride ldx (elements)
  int64_t ldx;
  const void* w;      // [N, K] bf16, row stride ldw
  int64_t ldw;
  void* y;            // [M, N] row stride ldy, y_dtype (BF16 or F32)
  int64_t ldy;
  DType y_dtype;
  int64_t M, N, K;
  bool accumulate;    // y += x·Wᵀ (the residual add) instead of y = x·Wᵀ
  // FP8 weights (the GEMV and gemm_fp8): W holds F8_E4M3 values and element (n, k) of the
  // product's W is W[n, k] · w_scale[(n / ws_rows) * ws_ld + k / ws_cols] (f32, on the device;
  // Linear::ScaleLayout's formula). BF16: no scales.
  DType w_dtype = DType::BF16;
  const float* w_scale = nullptr;
  int64_t ws_rows = 1, ws_cols = 1, ws_ld = 1;
};

// workspace_bytes 0 picks 32 MiB (what cuBLASLt's Hopper kernels ask for at most).
cudaError_t gemm_context_create(GemmContext** ctx, size_t workspace_bytes = 0);
void gemm_context_destroy(GemmContext* ctx);
// cudaErrorNotSupported when cuBLASLt has no algorithm for the shape; gemm_last_error says why.
cudaError_t gemm_bf16(GemmContext* ctx, const GemmParams& p, cudaStream_t stream);
// FP8 weights (p.w_dtype F8_E4M3 with its scale grid), bf16 x. With w8a8 and one scale per
// row of W (ws_rows 1, ws_cols >= K: per-channel, or per-tensor spread over the rows) x is
// quantized to E4M3 per token and cuBLASLt runs the FP8 product with outer-vector scales
// (W8A8, Hopper's FP8 tensor cores); otherwise, or where cuBLASLt has no such kernel, W's rows
// are dequantized to bf16 in pieces in the context's scratch and multiplied by gemm_bf16
// (weight-only numerics). Grows the scratch with cudaMalloc: not while a graph is captured.
// Where cuBLASLt has no outer-vector scale mode for the shape, W8A8 runs the unscaled FP8
// product into f32 scratch and applies both scales after it (scale_outer).
// First choice with w8a8, where K is whole 128-column groups and W's scales are per row or
// 128 x 128 blocks: x quantized per token and 128-column group, and cuBLASLt scales inside the
// product (VEC128 / BLK128x128 scale modes, Hopper and CUDA 12.9 on): one product straight into
// y. gemm_set_fp8_group_scales(ctx, false) skips it (GALE_CUDA_FP8_GROUPS=0: to compare).
cudaError_t gemm_fp8(GemmContext* ctx, const GemmParams& p, cudaStream_t stream, bool w8a8 = true);
void gemm_set_fp8_group_scales(GemmContext* ctx, bool on);
// Which path the last gemm_fp8 call took: "w8a8-vec128", "w8a8-blk128", "w8a8-outer",
// "w8a8-scalar" or "dequantize" (tests, benchmarks: a W8A8 product that silently fell back
// would still pass a loose check).
const char* gemm_fp8_last_path(const GemmContext* ctx);
const char* gemm_last_error(const GemmContext* ctx);
// The context's scratch, grown to at least `bytes` (cudaMalloc: not while a graph is captured);
// what gemm_fp8 and gemm_int's fallbacks dequantize W into. Valid until the next call that grows it.
cudaError_t gemm_scratch(GemmContext* ctx, size_t bytes, void** p);
// Plans held in the cache (for tests).
size_t gemm_cached_plans(const GemmContext* ctx);

}  // namespace gale::cuda
