// Grouped GEMM of an MoE layer: for every expert e,
//   y[r, :] = x[x_rows[r], :] · W_eᵀ   for the permuted rows r in [offsets[e], offsets[e + 1])
// bf16 x and W (each W_e a Linear's [N, K] row-major weight), f32 accumulation on the tensor
// cores (mma.sync m16n8k16), bf16 y. The offsets are read from device memory (moe_route wrote
// them): the host never learns the counts, so the grid is sized by an upper bound of the row
// tiles (sum over experts of ceil(count / TM) <= ceil(rows / TM) + min(E, rows)) and each CTA
// finds its (expert, row tile) from the offsets; CTAs past the last tile exit at once, and an
// expert without rows gets no tile (its weights are never read). x_rows folds the dispatch
// gather into the A loads (the gate|up product reads the normed activations in token order).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct GroupedGemmParams {
  const void* x;            // [*, K] bf16, row stride ldx
  int64_t ldx;
  const int32_t* x_rows;    // [max_rows] row of x for each permuted row (device), or nullptr: row r of x
  const void* const* w;     // [E] device array of device pointers, each [N, K] bf16 with row stride ldw
  int64_t ldw;
  const int32_t* offsets;   // [E + 1] device: expert e owns rows [offsets[e], offsets[e + 1])
  void* y;                  // [max_rows, N] bf16, row stride ldy
  int64_t ldy;
  int64_t n_experts;        // E
  int64_t max_rows;         // >= offsets[E] (T * top_k): sizes the grid
  int64_t N, K;             // N, K multiples of 8; x, W, y 16-byte aligned with strides multiples of 8
  // Rows per expert the host expects (T * top_k / E): picks the tile shape (16-row tiles for
  // decode, where the product is a stream over the chosen experts' weights). 0: from max_rows.
  int64_t rows_hint = 0;
};

bool moe_grouped_gemm_supported(const GroupedGemmParams& p);
cudaError_t moe_grouped_gemm(const GroupedGemmParams& p, cudaStream_t stream);
// Sets the kernels' shared-memory limits (above 48 KB) once; moe_grouped_gemm calls it too, but
// a backend calls it at load so that nothing of the kind happens during a graph capture.
cudaError_t moe_grouped_gemm_init();

}  // namespace gale::cuda
