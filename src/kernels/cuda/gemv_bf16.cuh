// Decode-sized products: y[M, N] (= or +=) x[M, K] · W[N, K]ᵀ for M <= 8 rows of bf16 x and bf16
// W, f32 accumulation. At these M the product is a pass over W (bandwidth-bound): one warp per
// output feature streams its W row with 16-byte loads, several in flight, and keeps the M dot
// products in registers. cuBLASLt's kernels for M = 1 reach ~75 % of copy bandwidth on an H100
// here (bench/RESULTS.md); this is the decode path's floor-chaser. Same parameters as gemm_bf16.
//
// For the smallest batches the GEMV can also normalize its input itself (GemvFusion): each block
// stages RMSNorm of the f32 residual rows in shared memory before the q|k|v and gate|up
// products, which removes the RMSNorm kernel (a single block, and its launch gap) per product.
// (SiLU-and-multiply staged the same way before the down product measured slower: each of its
// 512 blocks re-read 2 x 28 KB of gate|up and ran 14,336 expf before streaming W.)
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm_lt.cuh"

namespace gale::cuda {

struct GemvFusion {
  enum Kind { kPlain, kRMSNorm };
  Kind kind = kPlain;  // the input: as it is, or RMSNorm of it (below)
  // kRMSNorm: p.x holds f32 rows of K values; the product's input is
  //   bf16(norm_weight[k] * (x[k] / sqrt(mean(x²) + eps)))   (rmsnorm_residual's formula).
  const float* norm_weight = nullptr;
  float eps = 0.0f;
  // The output: false = y[m, n] as usual; true = SwiGLU of a gate|up product whose W rows are
  // interleaved in groups of four (rows 8b..8b+3 = gate 4b..4b+3, rows 8b+4..8b+7 = up 4b..4b+3):
  // y[m, j] = bf16(silu(g) * u) with g and u the bf16-rounded products of gate and up row j,
  // so y has N / 2 columns (bf16, no accumulate, N a multiple of 8). SiLU-mul without its
  // own kernel.
  bool swiglu = false;
  // The output of a decode step's q|k|v product (instead of a plain y): RoPE on the q and k
  // features, and k, v written into the paged cache too; rope_kv_write without its own kernel.
  // W rows: n_q q features, n_k k features, then n_k v features (N = n_q + 2 n_k), heads of
  // head_dim features each, rotated over the full head_dim (cos/sin: [M][head_dim / 2]). y gets
  // exactly what rope_kv_write leaves in q|k|v (bf16); cache row slots[m] (skipped when < 0)
  // gets the rotated k and the v, [slot][n_k] bf16. Needs bf16 y, no accumulate, N % 8 == 0.
  struct RopeKV {
    const float* cos = nullptr;
    const float* sin = nullptr;
    int64_t n_q = 0, n_k = 0, head_dim = 0;
    void* k_cache = nullptr;
    void* v_cache = nullptr;
    const int32_t* slots = nullptr;
  };
  bool rope = false;
  RopeKV rk{};
};

// True when gemv_bf16 takes these shapes: 1 <= M <= 8, K a multiple of 8, row strides and
// pointers of x and W 16-byte aligned.
bool gemv_bf16_supported(const GemmParams& p);
// True when gemv_bf16 can apply `in` itself (M <= 4 and the staged rows within 32 KB; for the
// SwiGLU output N % 8 == 0 and a bf16 y; for the RoPE output the shapes listed with RopeKV).
bool gemv_bf16_fusable(const GemmParams& p, const GemvFusion& in);

cudaError_t gemv_bf16(const GemmParams& p, cudaStream_t stream, const GemvFusion& in = {});

}  // namespace gale::cuda
