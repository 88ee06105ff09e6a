// AVX2 + FMA + F16C matmul kernels (compiled with those flags, called only after the run-time
// check in matmul.cpp). 8 f32 lanes per vector, 16 vector registers.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul_simd.h"

namespace gale::cpu::detail {
namespace {

// 8 weights starting at element k of w, widened exactly to f32.
template <WKind WK>
inline __m256 load8(const void* w, int64_t k) {
  if constexpr (WK == WKind::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + k);
  } else if constexpr (WK == WKind::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k)));
  } else if constexpr (WK == WKind::BF16) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else if constexpr (WK == WKind::E5M2) {
    // E5M2 is the high byte of an f16.
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(w) + k));
    return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(b), 8));
  } else {
    // E4M3 moved to f16 bit positions is an f16 with an exponent 8 too small: scale by 2^8
    // (exact); S.1111.111 is NaN in E4M3 but a number in f16, so it is patched.
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(w) + k));
    __m128i h = _mm_cvtepu8_epi16(b);
    __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x7f));
    __m128i f16 = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x80)), 8),
                               _mm_slli_epi16(mag, 7));
    __m256 f = _mm256_mul_ps(_mm256_cvtph_ps(f16), _mm256_set1_ps(256.0f));
    __m256 nan = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f))));
    return _mm256_blendv_ps(f, _mm256_set1_ps(__builtin_nanf("")), nan);
  }
}

// Same for the last n < 8 elements: copied into a zeroed buffer so nothing past the end of
// the row is read.
template <WKind WK>
inline __m256 load8_tail(const void* w, int64_t k, int64_t n) {
  alignas(32) unsigned char buf[32] = {};
  std::memcpy(buf, static_cast<const char*>(w) + k * elem_size(WK), size_t(n * elem_size(WK)));
  return load8<WK>(buf, 0);
}

// The vector operations matmul_simd.h's shared kernels are written over. AVX2 has no
// masked loads for every width, so tails go through a zeroed buffer: nothing past the end of
// the row is read or written.
struct Avx2 {
  using vec = __m256;
  static constexpr int64_t kLanes = 8;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec loadx(const float* x) { return _mm256_loadu_ps(x); }
  static vec loadx_tail(const float* x, int64_t n) {
    alignas(32) float buf[8] = {};
    std::memcpy(buf, x, size_t(n) * 4);
    return _mm256_load_ps(buf);
  }
  template <WKind WK>
  static vec loadw(const void* w, int64_t k) { return load8<WK>(w, k); }
  template <WKind WK>
  static vec loadw_tail(const void* w, int64_t k, int64_t n) { return load8_tail<WK>(w, k, n); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec bcast(float v) { return _mm256_set1_ps(v); }
  static float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static void store_tail(float* p, vec v, int64_t n) {
    alignas(32) float buf[8];
    _mm256_store_ps(buf, v);
    std::memcpy(p, buf, size_t(n) * 4);
  }

  // Integer weights (matmul_int_simd.h). AVX2's vpermps indexes 8 entries, not the 16 codes of
  // a nibble, so codes are converted and dequantized arithmetically: (f32(q) − z) · s, exact
  // in the subtraction, one rounding in the product: bitwise f32((q − z) · s).
  static vec loadi8(const void* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(p))));
  }
  static vec loadi8_tail(const void* p, int64_t n) {
    alignas(16) unsigned char buf[16] = {};
    std::memcpy(buf, p, size_t(n));
    return loadi8(buf);
  }
  struct U4Table {
    __m256 z, s;
  };
  static U4Table u4_table(int z, float s) { return {_mm256_set1_ps(float(z)), _mm256_set1_ps(s)}; }
  static void u4_pair(const void* bytes, const U4Table& t, vec& even, vec& odd) {
    const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(bytes)));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0xf)));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(d, 4));
    even = _mm256_mul_ps(_mm256_sub_ps(lo, t.z), t.s);
    odd = _mm256_mul_ps(_mm256_sub_ps(hi, t.z), t.s);
  }
  static void interleave_store(float* out, vec even, vec odd) {
    const __m256 a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
};

// ---- prefill: the register-blocked tile --------------------------------------------------

constexpr int kNr = 6;

// V vectors of 8 x rows × kNr W rows: 12 accumulators for V = 2, plus two x vectors and one
// broadcast W value = 15 of the 16 ymm registers.
template <int V>
void tile_v(const float* xp, const float* wc, int64_t kc, float* ct, const char* const* pf,
            int64_t num_pf) {
  __m256 acc[V][kNr];
  GALE_UNROLL
  for (int v = 0; v < V; ++v)
    GALE_UNROLL
    for (int j = 0; j < kNr; ++j) acc[v][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    if (k < num_pf) _mm_prefetch(pf[k], _MM_HINT_T1);
    __m256 a[V];
    GALE_UNROLL
    for (int v = 0; v < V; ++v) a[v] = _mm256_loadu_ps(xp + k * 8 * V + 8 * v);
    GALE_UNROLL
    for (int j = 0; j < kNr; ++j) {
      __m256 b = _mm256_broadcast_ss(wc + j * kWcStride + k);
      GALE_UNROLL
      for (int v = 0; v < V; ++v) acc[v][j] = _mm256_fmadd_ps(a[v], b, acc[v][j]);
    }
  }
  GALE_UNROLL
  for (int j = 0; j < kNr; ++j)
    GALE_UNROLL
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(ct + j * 8 * V + 8 * v, acc[v][j]);
  for (int64_t i = kc; i < num_pf; ++i) _mm_prefetch(pf[i], _MM_HINT_T1);
}

void tile(const float* xp, int mr, const float* wc, int64_t kc, float* ct, const char* const* pf,
          int64_t num_pf, const TileOut*) {
  if (mr == 16) tile_v<2>(xp, wc, kc, ct, pf, num_pf);
  else tile_v<1>(xp, wc, kc, ct, pf, num_pf);
}

}  // namespace

const MatmulKernels kAvx2Kernels = {"avx2", 16, kNr, matvec<Avx2>, convert_rows<Avx2>, tile, false};

}  // namespace gale::cpu::detail
