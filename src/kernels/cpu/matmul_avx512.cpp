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

#include "kernels/cpu/matmul_simd.h"

namespace gale::cpu::detail {
namespace {

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

// The vector operations matmul_simd.h's shared kernels are written over. Tails are masked
// loads and stores: lanes past n read as 0 and nothing past the row is touched.
struct Avx512 {
  using vec = __m512;
  static constexpr int64_t kLanes = 16;
  static __mmask16 mask(int64_t n) { return __mmask16((1u << n) - 1); }  // n ≤ 16
  static vec zero() { return _mm512_setzero_ps(); }
  static vec loadx(const float* x) { return _mm512_loadu_ps(x); }
  static vec loadx_tail(const float* x, int64_t n) { return _mm512_maskz_loadu_ps(mask(n), x); }
  template <WKind WK>
  static vec loadw(const void* w, int64_t k) { return load16<WK>(w, k); }
  template <WKind WK>
  static vec loadw_tail(const void* w, int64_t k, int64_t n) { return load16<WK>(w, k, mask(n)); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static vec bcast(float v) { return _mm512_set1_ps(v); }
  static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static void store_tail(float* p, vec v, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }

  // Integer weights (matmul_int_simd.h).
  static vec loadi8(const void* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p))));
  }
  static vec loadi8_tail(const void* p, int64_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask(n), p)));
  }
  // The 16 weights a scale's codes stand for, f32((q − z) · s) for q = 0..15: vpermps looks
  // each code up with the low 4 bits of its dword, so a byte widened to a dword indexes its
  // lower nibble as it is and its upper nibble after one shift (no mask, no conversion, and the
  // values are bitwise the dequantized weights).
  struct U4Table {
    __m512 t;
  };
  static U4Table u4_table(int z, float s) {
    const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return {_mm512_mul_ps(_mm512_sub_ps(q, _mm512_set1_ps(float(z))), _mm512_set1_ps(s))};
  }
  static void u4_pair(const void* bytes, const U4Table& t, vec& even, vec& odd) {
    const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(bytes)));
    even = _mm512_permutexvar_ps(d, t.t);
    odd = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), t.t);
  }
  static void interleave_store(float* out, vec even, vec odd) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(even, lo, odd));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(even, hi, odd));
  }
};

// ---- prefill: the register-blocked tile --------------------------------------------------

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

const MatmulKernels kAvx512Kernels = {"avx512", 32, kNr, matvec<Avx512>, convert_rows<Avx512>, tile, true};

}  // namespace gale::cpu::detail
