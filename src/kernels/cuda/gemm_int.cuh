// Integer-weight products: y[M, N] (= or +=) x[M, K] · Wᵀ with W INT8 or packed INT4 (model/weights.h's
// WeightScheme: weight (n, k) = (q − z) · s, f32 scales per row or per group of a multiple of 32
// columns, U8 zero points or the implied symmetric ones), bf16 x, f32 accumulation.
//
// The weights go to the device in a layout of their own (int_pack, at upload), made for the
// tensor cores: the products are mma.sync m16n8k16 with W as the 16-row A operand and up to 8
// tokens as the B operand. The codes become bf16 exactly (q − z is an integer of at most 8
// bits), so the tensor core multiplies exact weights; the scale multiplies each 32-column
// partial sum in f32. That leaves the decode GEMV (M = 1..8) about one instruction per weight
// (a 16-byte load of INT4 is 32 weights: 4 mma, 4 shifts, 4 lop3 and 4 bf16x2 subtractions per
// row pair) where an f32 FMA dot product needs ~5, so it can stream the codes at HBM speed.
//
// Layout (16-row tiles; K padded to whole tiles; rows past N padded with zero scales):
//   INT4: per 16 x 64 tile 512 bytes, 16 per lane of the warp that reads it: lane (g, t) =
//         (lane / 4, lane % 4) holds four 32-bit words, rows g and g + 8 of columns
//         [8t, 8t + 8) and [32 + 8t, 32 + 8t + 8). A word's 8 nibbles are columns
//         c, c+2, c+4, c+6 (bits 0..15) and c+1, c+3, c+5, c+7 (bits 16..31), so
//         ((w >> 4j) & 0x000F000F) | 0x43004300 is the bf16 pair (128 + q[c+2j], 128 + q[c+2j+1]).
//   INT8: per 16 x 32 tile 512 bytes: lane (g, t) holds 8 bytes of row g then 8 of row g + 8,
//         columns [8t, 8t + 8), each stored q + 128 (0x4B000000 | byte is the f32 2²³ + 128 + q).
// Inside a 32-column half the tensor core's k order is permuted (mma k positions 2t, 2t+1,
// 2t+8, 2t+9 of k-step s are columns 8t + 4s + 0..3), so each lane's x operand for a whole
// half is one 16-byte load of 8 consecutive columns. Tiles of one row tile are consecutive
// along K, row tiles one after the other. Scales: f32 [row tiles][ng][16], zero points U8 in
// the same layout.
#pragma once
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"

#if defined(__CUDACC__)
#define GALE_HD __host__ __device__ __forceinline__
#else
#define GALE_HD inline
#endif

namespace gale::cuda {

struct IntMatrix {
  const void* w = nullptr;          // the tiles (int_pack)
  const float* scale = nullptr;     // [row tiles][ng][16]
  const uint8_t* zero = nullptr;    // [row tiles][ng][16], 0..15 (INT4 only); null: 8 (INT4), 0 (INT8)
  int bits = 4;                     // 4 or 8
  int64_t N = 0, K = 0;             // the product's shape
  int64_t group = 0;                // columns per scale (a multiple of 32); 0: one per row
  int64_t ng = 1;                   // scales per row
};

// Columns of one tile, tiles per row tile, and the device bytes of each part.
GALE_HD int64_t int_tile_cols(int bits) { return bits == 4 ? 64 : 32; }
GALE_HD int64_t int_k_tiles(int bits, int64_t K) { return (K + int_tile_cols(bits) - 1) / int_tile_cols(bits); }
GALE_HD int64_t int_row_tiles(int64_t N) { return (N + 15) / 16; }
inline size_t int_code_bytes(int bits, int64_t N, int64_t K) {
  return size_t(int_row_tiles(N)) * size_t(int_k_tiles(bits, K)) * 512;
}
inline int64_t int_scales_per_row(int64_t K, int64_t group) { return group > 0 ? (K + group - 1) / group : 1; }
inline size_t int_scale_count(int64_t N, int64_t K, int64_t group) {
  return size_t(int_row_tiles(N)) * size_t(int_scales_per_row(K, group)) * 16;
}

// Where code (r, c) sits in the tiles: INT4 the byte and the nibble's shift, INT8 the byte.
struct IntCodePos {
  int64_t byte;
  int shift;
};
GALE_HD IntCodePos int_code_pos(int bits, int64_t K, int64_t r, int64_t c) {
  const int64_t rt = r / 16, i = r % 16, kt = c / int_tile_cols(bits), cc = c % int_tile_cols(bits);
  const int64_t tile = (rt * int_k_tiles(bits, K) + kt) * 512;
  const int64_t half = cc / 32, t = (cc % 32) / 8, e = cc % 8;
  const int64_t lane = (i % 8) * 4 + t;
  if (bits == 8) return {tile + lane * 16 + (i / 8) * 8 + e, 0};
  const int64_t word = half * 2 + i / 8;
  const int pos = int(e % 2 == 0 ? e / 2 : 4 + e / 2);
  return {tile + lane * 16 + word * 4 + pos / 2, (pos % 2) * 4};
}
GALE_HD int64_t int_scale_pos(int64_t ng, int64_t r, int64_t gi) { return ((r / 16) * ng + gi) * 16 + r % 16; }

// A host matrix in model/weights.h's layout: codes [rows][ld] (INT8 bytes) or [rows][ld / 2]
// (INT4, column 2j in the lower nibble of byte j); scale / zero of (r, c) at
// [r * scale_ld + c / group] (group 0: [r * scale_ld]).
struct IntHostMatrix {
  const void* codes = nullptr;
  int64_t ld = 0;                   // values per stored row
  const float* scale = nullptr;
  int64_t scale_ld = 1;
  const uint8_t* zero = nullptr;    // or null
  int bits = 4;
  int64_t group = 0;
  int64_t rows = 0, cols = 0;
};

// Writes src's rows to rows dst_row(r) of the device layout of a [N, K] matrix held on the host
// (codes: int_code_bytes, scales / zeros: int_scale_count; zeros may be null when every matrix
// packed into it is symmetric). K = src.cols; src.group must be the buffer's group (0 with 0).
// Padding (rows past N, columns past K) must be zero-filled by the caller first: padded
// columns are never multiplied by a nonzero x, padded rows have scale 0. Runs on the thread pool.
void int_pack(const IntHostMatrix& src, int64_t N, int64_t (*dst_row)(int64_t r, const void* ctx), const void* ctx,
              uint8_t* codes, float* scales, uint8_t* zeros);

struct IntGemmParams {
  const void* x;      // [M, K] bf16, row stride ldx (elements)
  int64_t ldx;
  IntMatrix w;        // [N, K] on the device
  void* y;            // [M, N] row stride ldy, y_dtype (BF16 or F32)
  int64_t ldy;
  DType y_dtype;
  int64_t M;
  bool accumulate;    // y += x·Wᵀ
};

// The tensor-core kernel takes K a multiple of 8 and x's rows 16-byte aligned: whole 8-column
// chunks of x per lane.
bool gemm_int_supported(const IntGemmParams& p);

// Decode GEMV (M <= 8) with the bf16 GEMV's fusions (gemv_bf16.cuh's GemvFusion, the same
// results: RMSNorm of f32 input rows for M <= 4, then the SwiGLU output of a gate|up product
// interleaved by four, or q|k|v's RoPE and K/V write, there with head_dim a multiple of 32).
// cudaErrorInvalidValue where !gemm_int_supported or the fusion does not take the shapes.
bool gemv_int_fusable(const IntGemmParams& p, const GemvFusion& in);
cudaError_t gemv_int(const IntGemmParams& p, cudaStream_t stream, const GemvFusion& in = {});

// Any M: up to `kernel_max_m` rows (and gemm_int_supported) the tensor-core kernel, in tiles of
// 16 or 32 tokens that share each read of a weight tile; above that, or where the kernel does
// not take the shapes, W dequantized to bf16 in pieces in the context's scratch and cuBLASLt
// (gemm_bf16; grows the scratch: not while a graph is captured).
// The tensor-core GEMM's tiling above M = 8: nt n8-tiles of tokens per block (2 or 4), rt warp
// groups of 8 / rt warps splitting K (2 or 4), wt 16-row tiles per warp group (1 or 2; each x load
// shared by them). Taken: {2,2,1}, {4,2,1}, {4,2,2}, {4,4,1}; {0,0,0} picks by shape.
struct IntGemmTile {
  int nt = 0, rt = 0, wt = 0;
};
cudaError_t gemm_int(GemmContext* ctx, const IntGemmParams& p, cudaStream_t stream, int64_t kernel_max_m = 64,
                     IntGemmTile tile = {});
// The scratch gemm_int's fallback takes for w (what a caller grows before a graph capture).
size_t gemm_int_scratch_bytes(const IntMatrix& w);
// Rows [r0, r0 + n) of W dequantized to bf16 rows of ld elements at dst (any K).
cudaError_t dequantize_int(const IntMatrix& w, int64_t r0, int64_t n, void* dst, int64_t ld, cudaStream_t stream);

// Gathers x's columns: dst[m][j] = src[m][perm[j]] (bf16; act-order weights' input).
cudaError_t gather_cols(const void* src, int64_t lds, const int32_t* perm, void* dst, int64_t ldd, int64_t M, int64_t K,
                        cudaStream_t stream);

}  // namespace gale::cuda
