// Internal interface between matmul.cpp (threading, blocking, dispatch) and the per-ISA
// kernel files matmul_{scalar,avx2,avx512,avx512bf16}.cpp.
//
// The ISA files are compiled with -mavx2 / -mavx512f ... flags. Any inline function or
// template they instantiate from a shared header could be emitted there with those
// instructions and then picked by the linker for a caller on a machine without them.
// So this header, and the ISA files, use nothing but plain C types: no <vector>, no
// std::function, not even core/dtype.h.
#pragma once
#include <cstdint>

namespace gale::cpu::detail {

// Weight element formats (mirrors the float rows of gale::DType), and the integer codes of
// model/weights.h's WeightScheme: I8 (int8, one byte per weight) and U4 (two 4-bit codes per
// byte, the even column in the lower nibble; rows of K / 2 bytes).
enum class WKind : int { F32, F16, BF16, E4M3, E5M2, I8, U4 };

// Scales of a quantized W (s == nullptr: none): element (n, k) counts as
// W[n, k] · s[(n / rows) · ld + k / cols], that product rounded to f32 (the dequantized weight
// an fp32 reference computes). Per tensor: rows = N, cols = K; per channel: rows = 1, cols = K;
// per group of g: rows = 1, cols = g; per g × g block: rows = cols = g. A cols < K is a
// multiple of 16 (segments start on whole vectors).
// Integer weights (I8, U4) always have scales (per channel, or per group of a multiple of 32)
// and count as f32((q − z) · s): z = zero[same index as s] (U4 with zero points), 8 (U4
// without), 0 (I8); kernels/ref/matmul_ref.h matmul_int is their definition.
struct WScale {
  const float* s;
  int64_t rows, cols, ld;
  const unsigned char* zero;  // U4 zero points in the scales' layout, or nullptr
};

// One y = x·Wᵀ (+ bias) problem; see matmul.h for the meaning of each field.
struct MatmulProblem {
  const float* x;  // [M, K], row stride ldx
  int64_t ldx, M, K;
  const void* w;  // [N, K], row-major, WKind elements
  WKind wk;
  int64_t N;
  const float* bias;  // [N] or nullptr
  float* y;           // [M, N], row stride ldy
  int64_t ldy;
  bool accumulate;
  WScale scale;
  // Integer weights may run with x quantized to int8 (matmul_a8_avx512bf16.cpp; where the
  // kernel set has that path): cpu::set_matmul_int_a8 / GALE_CPU_INT_A8.
  bool int_a8;
};

// Decode kernel, M ≤ kMatvecMaxRows: writes y[:, n0:n1] in one pass over W[n0:n1, :].
constexpr int64_t kMatvecMaxRows = 4;
using MatvecFn = void (*)(const MatmulProblem& p, int64_t n0, int64_t n1);

// GEMM pieces. The driver packs x into panels of mr rows, transposed: xp[k * mr + i] is
// x[m0 + i, k] (rows past M are zero); converts nr rows of W for a K-block of kc ≤ kKc
// columns to f32: wc[j * kWcStride + k] = W[n0 + j, k0 + k] (rows past N are zero); and calls
// the tile kernel, which writes ct[j * mr + i] = Σ_{k<kc} xp[k * mr + i] · wc[j * kWcStride + k]
// for i < mr, j < nr. Every tile kernel also accepts a half-height panel (mr / 2 rows) for
// short M tails. The fixed wc row stride lets the tile kernel address all nr rows from one
// pointer with constant offsets.
//
// While it runs, the tile kernel prefetches the cache lines pf[0 .. num_pf) into L2, one per
// k step (the rest after the loop): the driver passes the y lines the tile's sums go to and a
// share of the next tile's W rows, whose misses otherwise stall the write-back and the
// conversion (bench/NOTES-matmul.md, v4).
constexpr int64_t kKc = 1024;  // 512 and 1024 measured within noise; fewer y passes with 1024
// One cache line more than kKc: rows exactly 4 KiB apart would all fall into the same L1 set
// (8 ways), and the tile kernel reads all nr of them at the same k.
constexpr int64_t kWcStride = kKc + 16;
// With scales (sc->s not null), row j of the block is W row n0 + j, scaled as WScale says.
using ConvertRowsFn = void (*)(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0,
                               int64_t kc, float* wc, const WScale* sc, int64_t n0);
// Where a tile's sums go when the kernel writes y itself (MatmulKernels::tile_writes_y):
// for i < rows, j < cols, y[i * ldy + j] = s + bias[j] (bias when not null), or, with add,
// y[i * ldy + j] + (s + bias[j]): the same operations, in the same order, as the driver's
// write-back from ct, so the result is bitwise the same.
struct TileOut {
  float* y;
  int64_t ldy;
  int64_t rows, cols;
  const float* bias;  // [cols] or nullptr
  bool add;
};
// out == nullptr: write ct as above; otherwise write y through out (only kernels with
// tile_writes_y are given one).
using TileFn = void (*)(const float* xp, int mr, const float* wc, int64_t kc, float* ct,
                        const char* const* pf, int64_t num_pf, const TileOut* out);

struct MatmulKernels {
  const char* name;
  int mr;  // x rows per tile (two SIMD vectors)
  int nr;  // W rows per tile
  MatvecFn matvec;
  ConvertRowsFn convert_rows;  // converts `rows` ≤ nr rows; the driver zero-fills the rest
  TileFn tile;
  bool tile_writes_y;  // the tile kernel can add its sums into y itself (TileOut)
};

extern const MatmulKernels kScalarKernels;
extern const MatmulKernels kAvx2Kernels;
extern const MatmulKernels kAvx512Kernels;
extern const MatmulKernels kAvx512Bf16Kernels;  // kAvx512Kernels with an E4M3 decode kernel (AVX512-BF16, VBMI)

// The W8A8 / W4A8 decode kernel (matmul_a8_avx512bf16.cpp): whether it takes p (integer
// weights, K and the scale segments multiples of 64), and the product (false: out of memory
// for its buffers, nothing written).
bool int_a8_takes(const MatmulProblem& p);
bool int_a8_matvec(const MatmulProblem& p, int64_t n0, int64_t n1);

// Bytes of `elems` consecutive weights of kind wk starting at an even element (U4: half a byte
// each).
constexpr int64_t wk_bytes(WKind wk, int64_t elems) {
  return wk == WKind::F32 ? 4 * elems
         : (wk == WKind::F16 || wk == WKind::BF16) ? 2 * elems
         : wk == WKind::U4 ? elems / 2 : elems;
}

}  // namespace gale::cpu::detail
