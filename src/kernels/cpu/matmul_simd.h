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
//     static vec mul(vec a, vec b);
//     static vec bcast(float s);               // s in every lane
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

#include "kernels/cpu/matmul_int_simd.h"

namespace gale::cpu::detail {
namespace {

constexpr int64_t elem_size(WKind wk) {
  return wk == WKind::F32 ? 4 : (wk == WKind::F16 || wk == WKind::BF16) ? 2 : 1;  // not U4's
}

// ---- decode: y[m, n] for MX ≤ 4 rows of x, one W row at a time ---------------------------
//
// W rows are read one after another, front to back: a single sequential stream per thread
// is what the hardware prefetcher follows best. Interleaving 4 rows (4 streams one page
// apart) measured 17.5 GB/s against 22-24 GB/s for this order on one Zen4 core
// (bench/NOTES-matmul.md). U independent accumulators per x row hide the FMA latency.

// Scaled weights (S, matmul_kernels.h WScale): K is walked in segments that share one scale
// per W row (the whole row per channel or tensor, `cols` columns per group or block), and each
// widened weight vector is multiplied by its segment's scale before the FMA. Unscaled (!S)
// walks K as a single segment with no multiply: exactly the code of before scales existed.
inline const float* scale_row(const MatmulProblem& p, int64_t n) {
  return p.scale.s + (n / p.scale.rows) * p.scale.ld;
}
template <bool S>
inline int64_t segment_len(const MatmulProblem& p) {
  return S && p.scale.cols < p.K ? p.scale.cols : p.K;
}

template <class Isa, WKind WK, int MX, int U, bool S>
inline void matvec_row(const MatmulProblem& p, int64_t n) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes;
  const void* wr = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  const float* srow = S ? scale_row(p, n) : nullptr;
  const int64_t seg = segment_len<S>(p);
  vec acc[MX][U];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int u = 0; u < U; ++u) acc[m][u] = Isa::zero();
  for (int64_t kb = 0, si = 0; kb < p.K; kb += seg, ++si) {
    const int64_t ke = kb + seg < p.K ? kb + seg : p.K;
    vec sv = Isa::zero();
    if constexpr (S) sv = Isa::bcast(srow[si]);
    auto w_at = [&](int64_t k) {
      vec w = Isa::template loadw<WK>(wr, k);
      if constexpr (S) w = Isa::mul(w, sv);
      return w;
    };
    int64_t k = kb;
    for (; k + L * U <= ke; k += L * U) {
      GALE_UNROLL
      for (int u = 0; u < U; ++u) {
        vec wv = w_at(k + L * u);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][u] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k + L * u), wv, acc[m][u]);
      }
    }
    for (; k + L <= ke; k += L) {
      vec wv = w_at(k);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][0] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k), wv, acc[m][0]);
    }
    if (k < ke) {
      vec wv = Isa::template loadw_tail<WK>(wr, k, ke - k);
      if constexpr (S) wv = Isa::mul(wv, sv);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m)
        acc[m][0] = Isa::fma(Isa::loadx_tail(p.x + m * p.ldx + k, ke - k), wv, acc[m][0]);
    }
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
// one row at a time at K = 8192 (AVX-512). Scaled segments are walked the same way; a segment
// shorter than a 64-byte line of W just takes the per-vector loop.
template <class Isa, WKind WK, int MX, int R, bool S>
inline void matvec_rows_shared_x(const MatmulProblem& p, int64_t n) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes;
  constexpr int64_t kLine = 64 / elem_size(WK);  // elements per 64-byte line of W
  constexpr int64_t kAhead = 2048;               // prefetch distance in bytes
  const char* w0 = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  const int64_t seg = segment_len<S>(p);
  vec acc[MX][R];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int r = 0; r < R; ++r) acc[m][r] = Isa::zero();
  for (int64_t kb = 0, si = 0; kb < p.K; kb += seg, ++si) {
    const int64_t ke = kb + seg < p.K ? kb + seg : p.K;
    vec sv[R];
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      sv[r] = Isa::zero();
      if constexpr (S) sv[r] = Isa::bcast(scale_row(p, n + r)[si]);
    }
    int64_t k = kb;
    for (; k + kLine <= ke; k += kLine) {
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
          if constexpr (S) wv = Isa::mul(wv, sv[r]);
          GALE_UNROLL
          for (int m = 0; m < MX; ++m) acc[m][r] = Isa::fma(xv[m], wv, acc[m][r]);
        }
      }
    }
    for (; k < ke; k += L) {
      const int64_t left = ke - k < L ? ke - k : L;
      vec xv[MX];
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) xv[m] = Isa::loadx_tail(p.x + m * p.ldx + k, left);
      GALE_UNROLL
      for (int r = 0; r < R; ++r) {
        vec wv = Isa::template loadw_tail<WK>(w0 + r * p.K * elem_size(WK), k, left);
        if constexpr (S) wv = Isa::mul(wv, sv[r]);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][r] = Isa::fma(xv[m], wv, acc[m][r]);
      }
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

template <class Isa, WKind WK, int MX, bool S>
void matvec_range(const MatmulProblem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (MX * p.K * 4 > 16384) {
    // MX · R ≤ 8 accumulators (AVX2: MX · R + MX + 1 ≤ its 16 registers).
    constexpr int R = MX == 1 ? 8 : MX == 2 ? 4 : 2;
    for (; n + R <= n1; n += R) matvec_rows_shared_x<Isa, WK, MX, R, S>(p, n);
  }
  // MX · U accumulators + one W vector stay within AVX2's 16 registers.
  constexpr int U = MX == 1 ? 8 : MX == 2 ? 4 : 2;
  for (; n < n1; ++n) matvec_row<Isa, WK, MX, U, S>(p, n);
}

template <class Isa, WKind WK, bool S>
void matvec_wk(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return matvec_range<Isa, WK, 1, S>(p, n0, n1);
    case 2: return matvec_range<Isa, WK, 2, S>(p, n0, n1);
    case 3: return matvec_range<Isa, WK, 3, S>(p, n0, n1);
    default: return matvec_range<Isa, WK, 4, S>(p, n0, n1);
  }
}

// Only FP8 weights carry scales (the formats that have them), so only they instantiate the
// scaled kernels; a scale on a 16/32-bit weight is refused by the driver.
template <class Isa>
void matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  const bool scaled = p.scale.s != nullptr;
  switch (p.wk) {
    case WKind::F32: return matvec_wk<Isa, WKind::F32, false>(p, n0, n1);
    case WKind::F16: return matvec_wk<Isa, WKind::F16, false>(p, n0, n1);
    case WKind::BF16: return matvec_wk<Isa, WKind::BF16, false>(p, n0, n1);
    case WKind::E4M3:
      return scaled ? matvec_wk<Isa, WKind::E4M3, true>(p, n0, n1) : matvec_wk<Isa, WKind::E4M3, false>(p, n0, n1);
    case WKind::E5M2:
      return scaled ? matvec_wk<Isa, WKind::E5M2, true>(p, n0, n1) : matvec_wk<Isa, WKind::E5M2, false>(p, n0, n1);
    case WKind::I8:
    case WKind::U4: return int_matvec<Isa>(p, n0, n1);  // matmul_int_simd.h
  }
}

// ---- prefill: W panel conversion ----------------------------------------------------------

template <class Isa, WKind WK>
void convert_rows_wk(const void* w, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc, const WScale* sc,
                     int64_t n0) {
  constexpr int64_t L = Isa::kLanes;
  const bool scaled = sc && sc->s;
  for (int64_t j = 0; j < rows; ++j) {
    const void* row = static_cast<const char*>(w) + (j * ldw + k0) * elem_size(WK);
    float* dst = wc + j * kWcStride;
    if (!scaled) {
      int64_t k = 0;
      for (; k + L <= kc; k += L) Isa::store(dst + k, Isa::template loadw<WK>(row, k));
      if (k < kc) Isa::store_tail(dst + k, Isa::template loadw_tail<WK>(row, k, kc - k), kc - k);
      continue;
    }
    // Segments of one scale within [k0, k0 + kc), in block-relative columns.
    const float* srow = sc->s + ((n0 + j) / sc->rows) * sc->ld;
    for (int64_t kb = 0; kb < kc;) {
      const int64_t si = (k0 + kb) / sc->cols;
      const int64_t end = (si + 1) * sc->cols - k0, ke = end < kc ? end : kc;
      const typename Isa::vec sv = Isa::bcast(srow[si]);
      int64_t k = kb;
      for (; k + L <= ke; k += L) Isa::store(dst + k, Isa::mul(Isa::template loadw<WK>(row, k), sv));
      if (k < ke) Isa::store_tail(dst + k, Isa::mul(Isa::template loadw_tail<WK>(row, k, ke - k), sv), ke - k);
      kb = ke;
    }
  }
}

template <class Isa>
void convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc,
                  const WScale* sc, int64_t n0) {
  switch (wk) {
    case WKind::F32: return convert_rows_wk<Isa, WKind::F32>(w, ldw, rows, k0, kc, wc, sc, n0);
    case WKind::F16: return convert_rows_wk<Isa, WKind::F16>(w, ldw, rows, k0, kc, wc, sc, n0);
    case WKind::BF16: return convert_rows_wk<Isa, WKind::BF16>(w, ldw, rows, k0, kc, wc, sc, n0);
    case WKind::E4M3: return convert_rows_wk<Isa, WKind::E4M3>(w, ldw, rows, k0, kc, wc, sc, n0);
    case WKind::E5M2: return convert_rows_wk<Isa, WKind::E5M2>(w, ldw, rows, k0, kc, wc, sc, n0);
    case WKind::I8:
    case WKind::U4: return int_convert_rows<Isa>(w, wk, ldw, rows, k0, kc, wc, sc, n0);
  }
}

}  // namespace
}  // namespace gale::cpu::detail
