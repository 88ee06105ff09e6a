// The matmul kernels the AVX2 and AVX-512 files share, written once over an ISA's vector
// operations: the decode kernel (matvec: MX <= 4 rows of x against W rows streamed front to
// back) and the W panel conversion of the prefill GEMM. Only the register tile and the
// widening loads stay in the ISA files.
//
// Included only by matmul_avx2.cpp and matmul_avx512.cpp, after they define their `Isa`:
//   struct Isa {
//     using vec = ...;                         // kLanes f32 lanes
//     static constexpr int64_t kLanes;
//     static vec zero();
//     static vec loadx(const float* x);        // kLanes floats
//     static vec loadx_tail(const float* x, int64_t n);           // n <= kLanes, rest 0, no read past
//     template <WKind WK> static vec loadw(const void* w, int64_t k);  // W elements k.., widened exactly
//     template <WKind WK> static vec loadw_tail(const void* w, int64_t k, int64_t n);
//     static vec fma(vec a, vec b, vec c);     // a * b + c
//     static vec add(vec a, vec b);
//     static float hsum(vec v);
//     static void store(float* p, vec v);
//     static void store_tail(float* p, vec v, int64_t n);
//   };
// Everything here is in an anonymous namespace on purpose: each ISA file compiles its own
// copy with its own instruction set, and no copy may be merged with another's by the linker
// (see matmul_kernels.h).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/matmul_kernels.h"

// Fully unrolls a loop with a constant trip count early enough that arrays of vectors
// indexed by it become plain registers; otherwise GCC 12 keeps the tile accumulators in a
// stack array and stores them on every iteration (half speed, measured).
#define GALE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define GALE_UNROLL GALE_PRAGMA(unroll)
#else
#define GALE_UNROLL GALE_PRAGMA(GCC unroll 32)
#endif

namespace gale::cpu::detail {
namespace {

constexpr int64_t elem_size(WKind wk) {
  return wk == WKind::F32 ? 4 : (wk == WKind::F16 || wk == WKind::BF16) ? 2 : 1;
}

// ---- decode: y[m, n] for MX ≤ 4 rows of x, one W row at a time ---------------------------
//
// W rows are read one after another, front to back: a single sequential stream per thread
// is what the hardware prefetcher follows best. Interleaving 4 rows (4 streams one page
// apart) measured 17.5 GB/s against 22-24 GB/s for this order on one Zen4 core
// (bench/NOTES-matmul.md). U independent accumulators per x row hide the FMA latency.

template <class Isa, WKind WK, int MX, int U>
inline void matvec_row(const MatmulProblem& p, int64_t n) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes;
  const void* wr = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  vec acc[MX][U];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int u = 0; u < U; ++u) acc[m][u] = Isa::zero();
  int64_t k = 0;
  for (; k + L * U <= p.K; k += L * U) {
    GALE_UNROLL
    for (int u = 0; u < U; ++u) {
      vec wv = Isa::template loadw<WK>(wr, k + L * u);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][u] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k + L * u), wv, acc[m][u]);
    }
  }
  for (; k + L <= p.K; k += L) {
    vec wv = Isa::template loadw<WK>(wr, k);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m) acc[m][0] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k), wv, acc[m][0]);
  }
  if (k < p.K) {
    vec wv = Isa::template loadw_tail<WK>(wr, k, p.K - k);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      acc[m][0] = Isa::fma(Isa::loadx_tail(p.x + m * p.ldx + k, p.K - k), wv, acc[m][0]);
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    GALE_UNROLL
    for (int u = 1; u < U; ++u) acc[m][0] = Isa::add(acc[m][0], acc[m][u]);
    float v = Isa::hsum(acc[m][0]) + (p.bias ? p.bias[n] : 0.0f);
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

// When x does not stay in L1 next to the W stream (K = 8192: 32 KiB of x, all of a Zen4
// L1), each x load would come from L2 once per W row. Then R rows share every x load, and
// each row is prefetched into L2 a little ahead: 8 rows measured 23-24 GB/s against 12 for
// one row at a time at K = 8192 (AVX-512).
template <class Isa, WKind WK, int MX, int R>
inline void matvec_rows_shared_x(const MatmulProblem& p, int64_t n) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes;
  constexpr int64_t kLine = 64 / elem_size(WK);  // elements per 64-byte line of W
  constexpr int64_t kAhead = 2048;               // prefetch distance in bytes
  const char* w0 = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  vec acc[MX][R];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int r = 0; r < R; ++r) acc[m][r] = Isa::zero();
  int64_t k = 0;
  for (; k + kLine <= p.K; k += kLine) {
    GALE_UNROLL
    for (int r = 0; r < R; ++r)
      _mm_prefetch(w0 + (r * p.K + k) * elem_size(WK) + kAhead, _MM_HINT_T2);
    GALE_UNROLL
    for (int64_t kk = k; kk < k + kLine; kk += L) {
      vec xv[MX];
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) xv[m] = Isa::loadx(p.x + m * p.ldx + kk);
      GALE_UNROLL
      for (int r = 0; r < R; ++r) {
        vec wv = Isa::template loadw<WK>(w0 + r * p.K * elem_size(WK), kk);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][r] = Isa::fma(xv[m], wv, acc[m][r]);
      }
    }
  }
  for (; k < p.K; k += L) {
    const int64_t left = p.K - k < L ? p.K - k : L;
    vec xv[MX];
    GALE_UNROLL
    for (int m = 0; m < MX; ++m) xv[m] = Isa::loadx_tail(p.x + m * p.ldx + k, left);
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      vec wv = Isa::template loadw_tail<WK>(w0 + r * p.K * elem_size(WK), k, left);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][r] = Isa::fma(xv[m], wv, acc[m][r]);
    }
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    float* out = p.y + m * p.ldy + n;
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      float v = Isa::hsum(acc[m][r]) + (p.bias ? p.bias[n + r] : 0.0f);
      out[r] = p.accumulate ? out[r] + v : v;
    }
  }
}

template <class Isa, WKind WK, int MX>
void matvec_range(const MatmulProblem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (MX * p.K * 4 > 16384) {
    // MX · R ≤ 8 accumulators (AVX2: MX · R + MX + 1 ≤ its 16 registers).
    constexpr int R = MX == 1 ? 8 : MX == 2 ? 4 : 2;
    for (; n + R <= n1; n += R) matvec_rows_shared_x<Isa, WK, MX, R>(p, n);
  }
  // MX · U accumulators + one W vector stay within AVX2's 16 registers.
  constexpr int U = MX == 1 ? 8 : MX == 2 ? 4 : 2;
  for (; n < n1; ++n) matvec_row<Isa, WK, MX, U>(p, n);
}

template <class Isa, WKind WK>
void matvec_wk(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return matvec_range<Isa, WK, 1>(p, n0, n1);
    case 2: return matvec_range<Isa, WK, 2>(p, n0, n1);
    case 3: return matvec_range<Isa, WK, 3>(p, n0, n1);
    default: return matvec_range<Isa, WK, 4>(p, n0, n1);
  }
}

template <class Isa>
void matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.wk) {
    case WKind::F32: return matvec_wk<Isa, WKind::F32>(p, n0, n1);
    case WKind::F16: return matvec_wk<Isa, WKind::F16>(p, n0, n1);
    case WKind::BF16: return matvec_wk<Isa, WKind::BF16>(p, n0, n1);
    case WKind::E4M3: return matvec_wk<Isa, WKind::E4M3>(p, n0, n1);
    case WKind::E5M2: return matvec_wk<Isa, WKind::E5M2>(p, n0, n1);
  }
}

// ---- prefill: W panel conversion ----------------------------------------------------------

template <class Isa, WKind WK>
void convert_rows_wk(const void* w, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc) {
  constexpr int64_t L = Isa::kLanes;
  for (int64_t j = 0; j < rows; ++j) {
    const void* row = static_cast<const char*>(w) + (j * ldw + k0) * elem_size(WK);
    float* dst = wc + j * kWcStride;
    int64_t k = 0;
    for (; k + L <= kc; k += L) Isa::store(dst + k, Isa::template loadw<WK>(row, k));
    if (k < kc) Isa::store_tail(dst + k, Isa::template loadw_tail<WK>(row, k, kc - k), kc - k);
  }
}

template <class Isa>
void convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc) {
  switch (wk) {
    case WKind::F32: return convert_rows_wk<Isa, WKind::F32>(w, ldw, rows, k0, kc, wc);
    case WKind::F16: return convert_rows_wk<Isa, WKind::F16>(w, ldw, rows, k0, kc, wc);
    case WKind::BF16: return convert_rows_wk<Isa, WKind::BF16>(w, ldw, rows, k0, kc, wc);
    case WKind::E4M3: return convert_rows_wk<Isa, WKind::E4M3>(w, ldw, rows, k0, kc, wc);
    case WKind::E5M2: return convert_rows_wk<Isa, WKind::E5M2>(w, ldw, rows, k0, kc, wc);
  }
}

}  // namespace
}  // namespace gale::cpu::detail
