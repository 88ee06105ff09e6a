// AVX-512 matmul kernels (AVX-512 F + BW + VL; compiled with those flags, called only after
// the run-time check in matmul.cpp). 16 f32 lanes per vector.
//
// AVX512_BF16's vdpbf16ps would need x rounded to bf16, which changes the result; the
// contract is exact f32 products of the stored weights, so bf16 is widened with a shift.
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers fill "don't care" operands with a self-initialised
// variable and then warn about it at every inlined use; the warnings are about the header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu::detail {
namespace {

// Fully unrolls a loop with a constant trip count early enough that arrays of vectors
// indexed by it become plain registers; otherwise GCC 12 keeps the tile accumulators in a
// stack array and stores them on every iteration (half speed, measured).
#define GALE_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define GALE_UNROLL GALE_PRAGMA(unroll)
#else
#define GALE_UNROLL GALE_PRAGMA(GCC unroll 32)
#endif

// 16 weights starting at element k of w, widened exactly to f32. Masked lanes load nothing
// (no fault past the end of the row) and read as 0.
template <WKind WK>
inline __m512 load16(const void* w, int64_t k, __mmask16 m = 0xffff) {
  if constexpr (WK == WKind::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + k);
  } else if constexpr (WK == WKind::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + k));
  } else if constexpr (WK == WKind::BF16) {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (WK == WKind::E5M2) {
    // E5M2 is the high byte of an f16.
    __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(w) + k);
    return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 8));
  } else {
    // E4M3 placed at f16 bit position (sign to bit 15, exponent+mantissa to bits 7..14) is an
    // f16 whose exponent is 8 too small: scale by 2^8, exact. f16 has no S.1111.111 NaN, so
    // those codes are patched afterwards.
    __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(w) + k);
    __m256i h = _mm256_cvtepu8_epi16(b);
    __m256i mag = _mm256_and_si256(h, _mm256_set1_epi16(0x7f));
    __m256i f16 = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x80)), 8),
                                  _mm256_slli_epi16(mag, 7));
    __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(f16), _mm512_set1_ps(256.0f));
    __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
    return _mm512_mask_blend_ps(nan, f, _mm512_set1_ps(__builtin_nanf("")));
  }
}

constexpr int64_t elem_size(WKind wk) {
  return wk == WKind::F32 ? 4 : (wk == WKind::F16 || wk == WKind::BF16) ? 2 : 1;
}

// ---- decode: y[m, n] for MX ≤ 4 rows of x, one W row at a time ---------------------------
//
// W rows are read one after another, front to back: a single sequential stream per thread
// is what the hardware prefetcher follows best. Interleaving 4 rows (4 streams one page
// apart) measured 17.5 GB/s against 22-24 GB/s for this order on one Zen4 core
// (bench/NOTES-matmul.md). U independent accumulators per x row hide the FMA latency.

template <WKind WK, int MX, int U>
inline void matvec_row(const MatmulProblem& p, int64_t n) {
  const void* wr = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  __m512 acc[MX][U];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int u = 0; u < U; ++u) acc[m][u] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 * U <= p.K; k += 16 * U) {
    GALE_UNROLL
    for (int u = 0; u < U; ++u) {
      __m512 wv = load16<WK>(wr, k + 16 * u);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m)
        acc[m][u] = _mm512_fmadd_ps(_mm512_loadu_ps(p.x + m * p.ldx + k + 16 * u), wv, acc[m][u]);
    }
  }
  for (; k + 16 <= p.K; k += 16) {
    __m512 wv = load16<WK>(wr, k);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      acc[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(p.x + m * p.ldx + k), wv, acc[m][0]);
  }
  if (k < p.K) {
    __mmask16 mask = __mmask16((1u << (p.K - k)) - 1);
    __m512 wv = load16<WK>(wr, k, mask);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      acc[m][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p.x + m * p.ldx + k), wv, acc[m][0]);
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    GALE_UNROLL
    for (int u = 1; u < U; ++u) acc[m][0] = _mm512_add_ps(acc[m][0], acc[m][u]);
    float v = _mm512_reduce_add_ps(acc[m][0]) + (p.bias ? p.bias[n] : 0.0f);
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

// When x does not stay in L1 next to the W stream (K = 8192: 32 KiB of x, all of a Zen4
// L1), each x load would come from L2 once per W row. Then R rows share every x load, and
// each row is prefetched into L2 a little ahead: 8 rows measured 23-24 GB/s against 12 for
// one row at a time at K = 8192.
template <WKind WK, int MX, int R>
inline void matvec_rows_shared_x(const MatmulProblem& p, int64_t n) {
  constexpr int64_t kLine = 64 / elem_size(WK);  // elements per 64-byte line of W
  constexpr int64_t kAhead = 2048;               // prefetch distance in bytes
  const char* w0 = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  __m512 acc[MX][R];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kLine <= p.K; k += kLine) {
    GALE_UNROLL
    for (int r = 0; r < R; ++r)
      _mm_prefetch(w0 + (r * p.K + k) * elem_size(WK) + kAhead, _MM_HINT_T2);
    GALE_UNROLL
    for (int64_t kk = k; kk < k + kLine; kk += 16) {
      __m512 xv[MX];
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) xv[m] = _mm512_loadu_ps(p.x + m * p.ldx + kk);
      GALE_UNROLL
      for (int r = 0; r < R; ++r) {
        __m512 wv = load16<WK>(w0 + r * p.K * elem_size(WK), kk);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
      }
    }
  }
  for (; k < p.K; k += 16) {
    __mmask16 mask = p.K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (p.K - k)) - 1);
    __m512 xv[MX];
    GALE_UNROLL
    for (int m = 0; m < MX; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, p.x + m * p.ldx + k);
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      __m512 wv = load16<WK>(w0 + r * p.K * elem_size(WK), k, mask);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
    }
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    float* out = p.y + m * p.ldy + n;
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      float v = _mm512_reduce_add_ps(acc[m][r]) + (p.bias ? p.bias[n + r] : 0.0f);
      out[r] = p.accumulate ? out[r] + v : v;
    }
  }
}

template <WKind WK, int MX>
void matvec_range(const MatmulProblem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (MX * p.K * 4 > 16384) {
    constexpr int R = 8 / MX;  // MX · R ≤ 8 accumulators
    for (; n + R <= n1; n += R) matvec_rows_shared_x<WK, MX, R>(p, n);
  }
  constexpr int U = MX == 1 ? 8 : MX == 2 ? 4 : 2;  // ≤ 8 accumulators per x row set
  for (; n < n1; ++n) matvec_row<WK, MX, U>(p, n);
}

template <WKind WK>
void matvec_wk(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return matvec_range<WK, 1>(p, n0, n1);
    case 2: return matvec_range<WK, 2>(p, n0, n1);
    case 3: return matvec_range<WK, 3>(p, n0, n1);
    default: return matvec_range<WK, 4>(p, n0, n1);
  }
}

void matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  switch (p.wk) {
    case WKind::F32: return matvec_wk<WKind::F32>(p, n0, n1);
    case WKind::F16: return matvec_wk<WKind::F16>(p, n0, n1);
    case WKind::BF16: return matvec_wk<WKind::BF16>(p, n0, n1);
    case WKind::E4M3: return matvec_wk<WKind::E4M3>(p, n0, n1);
    case WKind::E5M2: return matvec_wk<WKind::E5M2>(p, n0, n1);
  }
}

// ---- prefill: W panel conversion and the register-blocked tile ---------------------------

template <WKind WK>
void convert_rows_wk(const void* w, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc) {
  for (int64_t j = 0; j < rows; ++j) {
    const void* row = static_cast<const char*>(w) + (j * ldw + k0) * elem_size(WK);
    float* dst = wc + j * kWcStride;
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) _mm512_storeu_ps(dst + k, load16<WK>(row, k));
    if (k < kc) {
      __mmask16 mask = __mmask16((1u << (kc - k)) - 1);
      _mm512_mask_storeu_ps(dst + k, mask, load16<WK>(row, k, mask));
    }
  }
}

void convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc,
                  float* wc) {
  switch (wk) {
    case WKind::F32: return convert_rows_wk<WKind::F32>(w, ldw, rows, k0, kc, wc);
    case WKind::F16: return convert_rows_wk<WKind::F16>(w, ldw, rows, k0, kc, wc);
    case WKind::BF16: return convert_rows_wk<WKind::BF16>(w, ldw, rows, k0, kc, wc);
    case WKind::E4M3: return convert_rows_wk<WKind::E4M3>(w, ldw, rows, k0, kc, wc);
    case WKind::E5M2: return convert_rows_wk<WKind::E5M2>(w, ldw, rows, k0, kc, wc);
  }
}

constexpr int kNr = 12;
constexpr int kNr_max = kNr;  // columns of a tile held in registers (≤ 16 for store_rows16)

// V vectors of 16 x rows × kNr W rows = 24 accumulators for V = 2, leaving registers for the
// two x vectors; each W value is used through an embedded broadcast operand of the FMA.
// Writes the tile's sums to y: acc[v][j] holds rows 16v..16v+15 of column j, so each group
// of 16 rows is transposed in registers (columns 12..15 are zero) and stored row by row with
// a mask. Operation order as in TileOut's comment.
__attribute__((always_inline)) inline void store_rows16(const __m512 (&col)[kNr_max], const TileOut& o, int64_t row0) {
  const __m512 z = _mm512_setzero_ps();
  __m512 r[16];
  GALE_UNROLL
  for (int j = 0; j < 16; ++j) r[j] = j < kNr_max ? col[j < kNr_max ? j : 0] : z;
  __m512 t[16], u[16];
  GALE_UNROLL
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  GALE_UNROLL
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
    u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
    u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  const __mmask16 mask = __mmask16((1u << o.cols) - 1);
  const __m512 bias = o.bias ? _mm512_maskz_loadu_ps(mask, o.bias) : z;
  GALE_UNROLL
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    const __m512 rows[4] = {_mm512_shuffle_f32x4(v0, w0, 0x88), _mm512_shuffle_f32x4(v1, w1, 0x88),
                            _mm512_shuffle_f32x4(v0, w0, 0xDD), _mm512_shuffle_f32x4(v1, w1, 0xDD)};
    GALE_UNROLL
    for (int l = 0; l < 4; ++l) {
      const int64_t i = row0 + c + 4 * l;  // row c + 4l of this group of 16
      if (i >= o.rows) continue;
      float* yr = o.y + i * o.ldy;
      __m512 v = rows[l];
      if (o.bias) v = _mm512_add_ps(v, bias);
      if (o.add) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yr), v);
      _mm512_mask_storeu_ps(yr, mask, v);
    }
  }
}

template <int V>
void tile_v(const float* xp, const float* wc, int64_t kc, float* ct, const char* const* pf,
            int64_t num_pf, const TileOut* out) {
  __m512 acc[V][kNr];
  GALE_UNROLL
  for (int v = 0; v < V; ++v)
    GALE_UNROLL
    for (int j = 0; j < kNr; ++j) acc[v][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    if (k < num_pf) _mm_prefetch(pf[k], _MM_HINT_T1);
    __m512 a[V];
    GALE_UNROLL
    for (int v = 0; v < V; ++v) a[v] = _mm512_loadu_ps(xp + k * 16 * V + 16 * v);
    GALE_UNROLL
    for (int j = 0; j < kNr; ++j) {
      __m512 b = _mm512_set1_ps(wc[j * kWcStride + k]);
      GALE_UNROLL
      for (int v = 0; v < V; ++v) acc[v][j] = _mm512_fmadd_ps(a[v], b, acc[v][j]);
    }
  }
  for (int64_t i = kc; i < num_pf; ++i) _mm_prefetch(pf[i], _MM_HINT_T1);
  if (out) {
    GALE_UNROLL
    for (int v = 0; v < V; ++v) store_rows16(acc[v], *out, 16 * v);
    return;
  }
  GALE_UNROLL
  for (int j = 0; j < kNr; ++j)
    GALE_UNROLL
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(ct + j * 16 * V + 16 * v, acc[v][j]);
}

void tile(const float* xp, int mr, const float* wc, int64_t kc, float* ct, const char* const* pf,
          int64_t num_pf, const TileOut* out) {
  if (mr == 32) tile_v<2>(xp, wc, kc, ct, pf, num_pf, out);
  else tile_v<1>(xp, wc, kc, ct, pf, num_pf, out);
}

}  // namespace

const MatmulKernels kAvx512Kernels = {"avx512", 32, kNr, matvec, convert_rows, tile, true};

}  // namespace gale::cpu::detail
