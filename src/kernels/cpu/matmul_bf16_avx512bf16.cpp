// vdpbf16ps block kernel of the bf16 GEMM (matmul_bf16.cpp), for CPUs with AVX512-BF16.
// Compiled with those flags, called only after the run-time check in matmul_bf16.cpp.
//
// One vdpbf16ps multiplies 16 pairs of bf16 and adds each pair's two products into an f32
// lane: here the lanes are 16 x rows (one packed x vector per column pair, matmul_bf16_kernels.h)
// and the other operand is one W row's pair of columns broadcast from memory, so W is read in
// place, as stored. NR W rows × 2 groups of 16 x rows are 2 · NR accumulators (24 for NR = 12,
// leaving registers for the two x vectors and the broadcast).
#include <immintrin.h>

#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "kernels/cpu/matmul_bf16_kernels.h"

#define GALE_BF16_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define GALE_BF16_UNROLL GALE_BF16_PRAGMA(unroll)
#else
#define GALE_BF16_UNROLL GALE_BF16_PRAGMA(GCC unroll 32)
#endif

namespace gale::cpu::detail {
namespace {

// Rows [j0, j0 + NR) of the 32-row W block against x groups x0, x1 (16 rows each); writes
// ct[j * 32 + i] for those rows.
template <int NR>
void tile(const uint16_t* w, int64_t ldw, const uint16_t* x0, const uint16_t* x1, int64_t kp, float* ct) {
  __m512 acc[2][NR];
  GALE_BF16_UNROLL
  for (int j = 0; j < NR; ++j) acc[0][j] = acc[1][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp / 2; ++p) {
    const __m512bh a0 = (__m512bh)_mm512_loadu_si512(x0 + p * 32);
    const __m512bh a1 = (__m512bh)_mm512_loadu_si512(x1 + p * 32);
    GALE_BF16_UNROLL
    for (int j = 0; j < NR; ++j) {
      int32_t pair;
      std::memcpy(&pair, w + j * ldw + 2 * p, 4);
      const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
      acc[0][j] = _mm512_dpbf16_ps(acc[0][j], a0, b);
      acc[1][j] = _mm512_dpbf16_ps(acc[1][j], a1, b);
    }
  }
  GALE_BF16_UNROLL
  for (int j = 0; j < NR; ++j) {
    _mm512_storeu_ps(ct + j * 32, acc[0][j]);
    _mm512_storeu_ps(ct + j * 32 + 16, acc[1][j]);
  }
}

}  // namespace

void bf16_block_avx512bf16(const uint16_t* w, int64_t ldw, const uint16_t* xb, int64_t num_pairs, int64_t kp,
                           float* ct) {
  const int64_t group = kp / 2 * 32;  // elements per packed group
  for (int64_t q = 0; q < num_pairs; ++q) {
    const uint16_t* x0 = xb + 2 * q * group;
    const uint16_t* x1 = x0 + group;
    float* c = ct + q * 1024;
    tile<12>(w, ldw, x0, x1, kp, c);
    tile<12>(w + 12 * ldw, ldw, x0, x1, kp, c + 12 * 32);
    tile<8>(w + 24 * ldw, ldw, x0, x1, kp, c + 24 * 32);
  }
}

}  // namespace gale::cpu::detail
