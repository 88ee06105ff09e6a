// Integer weights (WKind I8 / U4, matmul_kernels.h) in the matmul kernels the AVX2 and AVX-512
// files share: the exact decode kernel and the W panel conversion of the prefill GEMM. Every
// weight counts as f32((q − z) · s) and is multiplied with x in f32, as kernels/ref/matmul_ref.h
// matmul_int defines the product (W8A16 / W4A16: the activations are not rounded).
//
// Included only by matmul_simd.h, after the ISA file has defined its `Isa`, which adds to the
// float operations:
//   static vec loadi8(const void* p);                // kLanes int8, widened exactly
//   static vec loadi8_tail(const void* p, int64_t n);  // n < kLanes, rest 0, no read past
//   struct U4Table;                                   // what dequantizes one scale's codes
//   static U4Table u4_table(int z, float s);
//   // kLanes bytes = 2 · kLanes codes: the lower nibbles' weights (even columns) in `even`,
//   // the upper nibbles' (odd columns) in `odd`, each f32((q − z) · s), bitwise.
//   static void u4_pair(const void* bytes, const U4Table& t, vec& even, vec& odd);
//   // even / odd as above back into column order: 2 · kLanes floats at out.
//   static void interleave_store(float* out, vec even, vec odd);
// Anonymous namespace: each ISA file compiles its own copy (matmul_kernels.h says why).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>

#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu::detail {
namespace {

// The zero point of scale index i of a U4 matrix: its stored one, else the implied 8.
inline int u4_zero(const WScale& sc, int64_t i) { return sc.zero ? int(sc.zero[i]) : 8; }

// x rows with the columns of each 2·kLanes block reordered to [even columns, odd columns], the
// order u4_pair hands out the weights: the decode kernel then needs no shuffle per weight. A
// per-thread buffer, grown as needed.
struct IntXBuffer {
  float* p = nullptr;
  int64_t cap = 0;
  ~IntXBuffer() { std::free(p); }
  float* get(int64_t n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, size_t((n * 4 + 63) / 64 * 64)));
      cap = p ? n : 0;
    }
    return p;
  }
};

template <class Isa>
void u4_permute_x(const float* x, int64_t K, float* out) {
  constexpr int64_t B = 2 * Isa::kLanes;
  int64_t k = 0;
  for (; k + B <= K; k += B)
    for (int64_t i = 0; i < Isa::kLanes; ++i) {
      out[k + i] = x[k + 2 * i];
      out[k + Isa::kLanes + i] = x[k + 2 * i + 1];
    }
  for (; k < K; ++k) out[k] = x[k];  // the tail is walked one column at a time
}

// W is streamed one row after another, front to back, with a software prefetch this far
// ahead (the order and distance the E4M3 decode kernel measured best, bench/RESULTS.md).
constexpr int64_t kIntAhead = 1024;

// Row n of U4 weights against MX rows of x (xp: permuted, [MX][K]).
template <class Isa, int MX>
inline void u4_row(const MatmulProblem& p, int64_t n, const float* xp) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes, B = 2 * L;
  const int64_t K = p.K;
  const unsigned char* w = static_cast<const unsigned char*>(p.w) + n * (K / 2);
  const int64_t seg = p.scale.cols < K ? p.scale.cols : K;  // a multiple of B when < K
  const int64_t srow = (n / p.scale.rows) * p.scale.ld;
  vec acc[MX][4];
  float tail[MX] = {};
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int u = 0; u < 4; ++u) acc[m][u] = Isa::zero();
  for (int64_t kb = 0, si = 0; kb < K; kb += seg, ++si) {
    const int64_t ke = kb + seg < K ? kb + seg : K;
    const float s = p.scale.s[srow + si];
    const int z = u4_zero(p.scale, srow + si);
    const typename Isa::U4Table t = Isa::u4_table(z, s);
    int64_t k = kb;
    for (; k + 2 * B <= ke; k += 2 * B) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k / 2) + kIntAhead, _MM_HINT_T0);
      vec e0, o0, e1, o1;
      Isa::u4_pair(w + k / 2, t, e0, o0);
      Isa::u4_pair(w + (k + B) / 2, t, e1, o1);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) {
        const float* x = xp + m * K + k;
        acc[m][0] = Isa::fma(Isa::loadx(x), e0, acc[m][0]);
        acc[m][1] = Isa::fma(Isa::loadx(x + L), o0, acc[m][1]);
        acc[m][2] = Isa::fma(Isa::loadx(x + B), e1, acc[m][2]);
        acc[m][3] = Isa::fma(Isa::loadx(x + B + L), o1, acc[m][3]);
      }
    }
    for (; k + B <= ke; k += B) {
      vec e0, o0;
      Isa::u4_pair(w + k / 2, t, e0, o0);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) {
        const float* x = xp + m * K + k;
        acc[m][0] = Isa::fma(Isa::loadx(x), e0, acc[m][0]);
        acc[m][1] = Isa::fma(Isa::loadx(x + L), o0, acc[m][1]);
      }
    }
    // Columns past the last whole block (K not a multiple of B): in column order.
    for (; k < ke; ++k) {
      const unsigned char b = w[k / 2];
      const float wv = float((k % 2 == 0 ? b & 0xf : b >> 4) - z) * s;
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) tail[m] += xp[m * K + k] * wv;
    }
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    const vec a = Isa::add(Isa::add(acc[m][0], acc[m][1]), Isa::add(acc[m][2], acc[m][3]));
    float v = Isa::hsum(a) + tail[m];
    if (p.bias) v += p.bias[n];
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

// Row n of I8 weights against MX rows of x: each scale segment's exact sum of x · q, then
// times its scale (the same products as x · f32(q · s) up to one rounding of the scale).
template <class Isa, int MX>
inline void i8_row(const MatmulProblem& p, int64_t n) {
  using vec = typename Isa::vec;
  constexpr int64_t L = Isa::kLanes;
  const int64_t K = p.K;
  const signed char* w = static_cast<const signed char*>(p.w) + n * K;
  const int64_t seg = p.scale.cols < K ? p.scale.cols : K;
  const float* srow = p.scale.s + (n / p.scale.rows) * p.scale.ld;
  constexpr int U = MX == 1 ? 4 : 2;
  vec total[MX];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) total[m] = Isa::zero();
  for (int64_t kb = 0, si = 0; kb < K; kb += seg, ++si) {
    const int64_t ke = kb + seg < K ? kb + seg : K;
    vec acc[MX][U];
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      GALE_UNROLL
      for (int u = 0; u < U; ++u) acc[m][u] = Isa::zero();
    int64_t k = kb;
    for (; k + U * L <= ke; k += U * L) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k) + kIntAhead, _MM_HINT_T0);
      GALE_UNROLL
      for (int u = 0; u < U; ++u) {
        const vec wv = Isa::loadi8(w + k + u * L);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][u] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k + u * L), wv, acc[m][u]);
      }
    }
    for (; k + L <= ke; k += L) {
      const vec wv = Isa::loadi8(w + k);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][0] = Isa::fma(Isa::loadx(p.x + m * p.ldx + k), wv, acc[m][0]);
    }
    if (k < ke) {
      const vec wv = Isa::loadi8_tail(w + k, ke - k);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m)
        acc[m][0] = Isa::fma(Isa::loadx_tail(p.x + m * p.ldx + k, ke - k), wv, acc[m][0]);
    }
    const vec sv = Isa::bcast(srow[si]);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m) {
      GALE_UNROLL
      for (int u = 1; u < U; ++u) acc[m][0] = Isa::add(acc[m][0], acc[m][u]);
      total[m] = Isa::fma(acc[m][0], sv, total[m]);
    }
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    float v = Isa::hsum(total[m]) + (p.bias ? p.bias[n] : 0.0f);
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

thread_local IntXBuffer t_int_x;

template <class Isa, int MX>
void int_matvec_mx(const MatmulProblem& p, int64_t n0, int64_t n1) {
  if (p.wk == WKind::I8) {
    for (int64_t n = n0; n < n1; ++n) i8_row<Isa, MX>(p, n);
    return;
  }
  float* xp = t_int_x.get(MX * p.K);
  if (!xp) std::abort();  // out of memory for K floats
  for (int m = 0; m < MX; ++m) u4_permute_x<Isa>(p.x + m * p.ldx, p.K, xp + m * p.K);
  for (int64_t n = n0; n < n1; ++n) u4_row<Isa, MX>(p, n, xp);
}

template <class Isa>
void int_matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return int_matvec_mx<Isa, 1>(p, n0, n1);
    case 2: return int_matvec_mx<Isa, 2>(p, n0, n1);
    case 3: return int_matvec_mx<Isa, 3>(p, n0, n1);
    default: return int_matvec_mx<Isa, 4>(p, n0, n1);
  }
}

// The prefill GEMM's W panel: rows [n0, n0 + rows) of the block [k0, k0 + kc) as their exact
// f32 weights, in column order (wc rows kWcStride apart). k0 is a multiple of kKc.
template <class Isa>
void int_convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc,
                      const WScale* sc, int64_t n0) {
  constexpr int64_t L = Isa::kLanes, B = 2 * L;
  for (int64_t j = 0; j < rows; ++j) {
    const int64_t srow = ((n0 + j) / sc->rows) * sc->ld;
    float* dst = wc + j * kWcStride;
    for (int64_t kb = 0; kb < kc;) {
      const int64_t si = (k0 + kb) / sc->cols;
      const int64_t end = (si + 1) * sc->cols - k0, ke = end < kc ? end : kc;
      const float s = sc->s[srow + si];
      int64_t k = kb;
      if (wk == WKind::I8) {
        const signed char* row = static_cast<const signed char*>(w) + j * ldw + k0;
        const typename Isa::vec sv = Isa::bcast(s);
        for (; k + L <= ke; k += L) Isa::store(dst + k, Isa::mul(Isa::loadi8(row + k), sv));
        if (k < ke) Isa::store_tail(dst + k, Isa::mul(Isa::loadi8_tail(row + k, ke - k), sv), ke - k);
      } else {
        const unsigned char* row = static_cast<const unsigned char*>(w) + (j * ldw + k0) / 2;
        const int z = u4_zero(*sc, srow + si);
        const typename Isa::U4Table t = Isa::u4_table(z, s);
        for (; k + B <= ke; k += B) {
          typename Isa::vec e, o;
          Isa::u4_pair(row + k / 2, t, e, o);
          Isa::interleave_store(dst + k, e, o);
        }
        for (; k < ke; ++k) {
          const unsigned char b = row[k / 2];
          dst[k] = float((k % 2 == 0 ? b & 0xf : b >> 4) - z) * s;
        }
      }
      kb = ke;
    }
  }
}

}  // namespace
}  // namespace gale::cpu::detail
