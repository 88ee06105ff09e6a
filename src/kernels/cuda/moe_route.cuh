// MoE routing and combine on the device, so that an MoE layer needs no host round trip (and a
// decode step can be a CUDA graph):
//   moe_route:   per token, softmax over the E router logits in f32, the top-k experts (ties: the
//                lower expert first, as the host path's partial_sort), weights renormalized to sum
//                1 when asked (Mixtral); then the dispatch plan of a grouped GEMM: offsets[e] =
//                first permuted row of expert e (exclusive prefix of the counts), and a
//                permutation of the T x K (token, expert) slots grouped by expert, ascending
//                token order within an expert (deterministic, whatever the launch).
//   moe_combine: x[t] += sum_k w[t, k] * y[slot_of[t, k]], the K terms of a token added in
//                ascending expert order with one fmaf each (the order of the host path's
//                per-expert scatter-adds); no atomics, so the sum is the same on every run.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

constexpr int64_t kMoeMaxExperts = 256, kMoeMaxTopK = 8;

struct MoeRouteParams {
  const float* logits;  // [T, E] router logits, row stride ldl
  int64_t ldl;
  int64_t T, E, K;      // E <= kMoeMaxExperts, 1 <= K <= min(E, kMoeMaxTopK)
  bool renormalize;     // norm_topk_prob
  // Outputs (device):
  int32_t* topk_ids;    // [T, K] chosen experts of each token, by falling weight
  float* topk_w;        // [T, K] their routing weights
  int32_t* offsets;     // [E + 1] expert e owns permuted rows [offsets[e], offsets[e + 1]); offsets[E] = T * K
  int32_t* slot_of;     // [T, K] permuted row of slot (t, k)
  int32_t* perm_rows;   // [T * K] token of each permuted row
};

// Two launches: the top-k (one warp a token, any T) and the permutation (one block).
cudaError_t moe_route(const MoeRouteParams& p, cudaStream_t stream);

struct MoeCombineParams {
  const void* y;           // [T * K, cols] expert outputs in permuted order, row stride ldy, y_dtype (BF16/F32)
  int64_t ldy;
  DType y_dtype;
  const int32_t* topk_ids; // [T, K]
  const float* topk_w;     // [T, K]
  const int32_t* slot_of;  // [T, K]
  float* x;                // [T, cols] residual, row stride ldx: x += the weighted sum
  int64_t ldx;
  int64_t T, K, cols;
};

cudaError_t moe_combine(const MoeCombineParams& p, cudaStream_t stream);

}  // namespace gale::cuda
