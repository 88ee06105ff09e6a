// AVX2 + FMA + F16C matmul kernels (compiled with those flags, called only after the run-time
// check in matmul.cpp). 8 f32 lanes per vector, 16 vector registers.
#include <immintrin.h>

#include <cstring>

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

constexpr int64_t elem_size(WKind wk) {
  return wk == WKind::F32 ? 4 : (wk == WKind::F16 || wk == WKind::BF16) ? 2 : 1;
}

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

inline __m256 loadx_tail(const float* x, int64_t n) {
  alignas(32) float buf[8] = {};
  std::memcpy(buf, x, size_t(n) * 4);
  return _mm256_load_ps(buf);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---- decode: y[m, n] for MX ≤ 4 rows of x, one W row at a time ---------------------------
//
// Rows are read one after another so each thread is one sequential stream (see the AVX-512
// file); U independent accumulators per x row hide the FMA latency.

template <WKind WK, int MX, int U>
inline void matvec_row(const MatmulProblem& p, int64_t n) {
  const void* wr = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  __m256 acc[MX][U];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 * U <= p.K; k += 8 * U) {
    GALE_UNROLL
    for (int u = 0; u < U; ++u) {
      __m256 wv = load8<WK>(wr, k + 8 * u);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m)
        acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(p.x + m * p.ldx + k + 8 * u), wv, acc[m][u]);
    }
  }
  for (; k + 8 <= p.K; k += 8) {
    __m256 wv = load8<WK>(wr, k);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(p.x + m * p.ldx + k), wv, acc[m][0]);
  }
  if (k < p.K) {
    __m256 wv = load8_tail<WK>(wr, k, p.K - k);
    GALE_UNROLL
    for (int m = 0; m < MX; ++m)
      acc[m][0] = _mm256_fmadd_ps(loadx_tail(p.x + m * p.ldx + k, p.K - k), wv, acc[m][0]);
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    GALE_UNROLL
    for (int u = 1; u < U; ++u) acc[m][0] = _mm256_add_ps(acc[m][0], acc[m][u]);
    float v = hsum(acc[m][0]) + (p.bias ? p.bias[n] : 0.0f);
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

// When x does not stay in L1 beside the W stream, R rows share every x load and each row
// is prefetched into L2 ahead (see the AVX-512 file for the measurements).
template <WKind WK, int MX, int R>
inline void matvec_rows_shared_x(const MatmulProblem& p, int64_t n) {
  constexpr int64_t kLine = 64 / elem_size(WK);  // elements per 64-byte line of W
  constexpr int64_t kAhead = 2048;               // prefetch distance in bytes
  const char* w0 = static_cast<const char*>(p.w) + n * p.K * elem_size(WK);
  __m256 acc[MX][R];
  GALE_UNROLL
  for (int m = 0; m < MX; ++m)
    GALE_UNROLL
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + kLine <= p.K; k += kLine) {
    GALE_UNROLL
    for (int r = 0; r < R; ++r)
      _mm_prefetch(w0 + (r * p.K + k) * elem_size(WK) + kAhead, _MM_HINT_T2);
    GALE_UNROLL
    for (int64_t kk = k; kk < k + kLine; kk += 8) {
      __m256 xv[MX];
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) xv[m] = _mm256_loadu_ps(p.x + m * p.ldx + kk);
      GALE_UNROLL
      for (int r = 0; r < R; ++r) {
        __m256 wv = load8<WK>(w0 + r * p.K * elem_size(WK), kk);
        GALE_UNROLL
        for (int m = 0; m < MX; ++m) acc[m][r] = _mm256_fmadd_ps(xv[m], wv, acc[m][r]);
      }
    }
  }
  for (; k < p.K; k += 8) {
    const int64_t left = p.K - k < 8 ? p.K - k : 8;
    __m256 xv[MX];
    GALE_UNROLL
    for (int m = 0; m < MX; ++m) xv[m] = loadx_tail(p.x + m * p.ldx + k, left);
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      __m256 wv = load8_tail<WK>(w0 + r * p.K * elem_size(WK), k, left);
      GALE_UNROLL
      for (int m = 0; m < MX; ++m) acc[m][r] = _mm256_fmadd_ps(xv[m], wv, acc[m][r]);
    }
  }
  GALE_UNROLL
  for (int m = 0; m < MX; ++m) {
    float* out = p.y + m * p.ldy + n;
    GALE_UNROLL
    for (int r = 0; r < R; ++r) {
      float v = hsum(acc[m][r]) + (p.bias ? p.bias[n + r] : 0.0f);
      out[r] = p.accumulate ? out[r] + v : v;
    }
  }
}

template <WKind WK, int MX>
void matvec_range(const MatmulProblem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (MX * p.K * 4 > 16384) {
    constexpr int R = MX == 1 ? 8 : MX == 2 ? 4 : 2;  // MX · R + MX + 1 ≤ 16 registers
    for (; n + R <= n1; n += R) matvec_rows_shared_x<WK, MX, R>(p, n);
  }
  // MX · U accumulators + one W vector stay within the 16 registers.
  constexpr int U = MX == 1 ? 8 : MX == 2 ? 4 : 2;
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
    for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(dst + k, load8<WK>(row, k));
    if (k < kc) {
      alignas(32) float buf[8];
      _mm256_store_ps(buf, load8_tail<WK>(row, k, kc - k));
      std::memcpy(dst + k, buf, size_t(kc - k) * 4);
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

const MatmulKernels kAvx2Kernels = {"avx2", 16, kNr, matvec, convert_rows, tile, false};

}  // namespace gale::cpu::detail
