// Decode over integer weights with the activations quantized to int8 (W8A8 / W4A8): the
// opt-in fast path (GALE_CPU_INT_A8=1, cpu::set_matmul_int_a8) for CPUs of the avx512bf16
// kernel set, which all have AVX512-VNNI (Cooper Lake, Sapphire Rapids, Zen 4). Compiled with
// those flags, called only after the run-time check in matmul.cpp.
//
// Why: the exact W4A16 kernel (matmul_int_simd.h) widens every code to f32 and spends one FMA
// per 16 weights: 37 G weights/s on two cores with W in L2 (bench/matmul_bench --weights
// int4), under what the memory delivers (30 GB/s = 60 G INT4 weights/s). vpdpbusd multiplies
// 64 unsigned bytes by 64 signed bytes and adds them into 16 int32 lanes in one instruction.
//
// Numerics (not the reference's: a measured option): each x row is quantized per block of 128
// columns (64 where a weight group is 64), q = round(x / sx) with sx = max|x| / 127 over the
// block (round to nearest even);
// Σ_k x·w becomes Σ_blocks sx_b · Σ_k q·code, exact in int32, then f32. Weights: INT8 codes
// as stored; INT4 nibbles as stored. vpdpbusd needs one unsigned operand, so
//   INT8: the codes + 128 (w ^ 0x80) times signed q, minus 128·Σq;
//   INT4: the nibbles (0..15) times signed q, minus z·Σq;
// the corrections use per-block sums of q, computed once per call with the quantized x.
// Each scale segment's sum is multiplied by its scale s.
#include <immintrin.h>

#include <cstdlib>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu::detail {
namespace {

#define GALE_UNROLL_ALL _Pragma("GCC unroll 16")

constexpr int64_t kDot = 64;  // columns per vpdpbusd

// Per thread: x rows quantized, [MX][K] int8 (INT4: each 64-column block reordered to [even
// columns, odd columns], the order the nibbles unpack in); sx [MX][K / xb], each x block's
// scale; xs [MX][segments], Σ over the segment's x blocks of sx · Σq (for the corrections).
struct A8Buffer {
  void* p = nullptr;
  int64_t cap = 0;
  ~A8Buffer() { std::free(p); }
  void* get(int64_t bytes) {
    if (bytes > cap) {
      std::free(p);
      p = std::aligned_alloc(64, size_t((bytes + 63) / 64 * 64));
      cap = p ? bytes : 0;
    }
    return p;
  }
};
thread_local A8Buffer t_a8;

struct Perm {
  alignas(64) unsigned char idx[64];
};
constexpr Perm make_perm() {
  Perm t{};
  for (int j = 0; j < 32; ++j) {
    t.idx[j] = static_cast<unsigned char>(2 * j);
    t.idx[32 + j] = static_cast<unsigned char>(2 * j + 1);
  }
  return t;
}
constexpr Perm kEvenOdd = make_perm();

// One x row in blocks of XB (64 or 128) columns, K a multiple of XB, seg of XB.
template <int XB>
void quantize_row(const float* x, int64_t K, int64_t seg, bool even_odd, signed char* q, float* sx, float* xs) {
  constexpr int V = XB / 16;
  const __m512i perm = _mm512_load_si512(kEvenOdd.idx);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  float seg_sum = 0.0f;
  for (int64_t k = 0, b = 0; k < K; k += XB, ++b) {
    __m512 v[V];
    __m512 m = _mm512_setzero_ps();
    GALE_UNROLL_ALL
    for (int i = 0; i < V; ++i) {
      v[i] = _mm512_loadu_ps(x + k + 16 * i);
      m = _mm512_max_ps(m, _mm512_and_ps(v[i], abs_mask));
    }
    const float amax = _mm512_reduce_max_ps(m);
    const float s = amax / 127.0f;
    const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    __m512i sum = _mm512_setzero_si512();
    alignas(64) signed char bytes[XB];
    GALE_UNROLL_ALL
    for (int i = 0; i < V; ++i) {
      const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));
      sum = _mm512_add_epi32(sum, qi);
      _mm_store_si128(reinterpret_cast<__m128i*>(bytes + 16 * i), _mm512_cvtsepi32_epi8(qi));
    }
    GALE_UNROLL_ALL
    for (int h = 0; h < XB / 64; ++h) {
      __m512i out = _mm512_load_si512(bytes + 64 * h);
      if (even_odd) out = _mm512_permutexvar_epi8(perm, out);
      _mm512_storeu_si512(q + k + 64 * h, out);
    }
    sx[b] = s;
    seg_sum += s * float(_mm512_reduce_add_epi32(sum));
    if ((k + XB) % seg == 0 || k + XB == K) {
      *xs++ = seg_sum;
      seg_sum = 0.0f;
    }
  }
}

// 64 weights as the unsigned bytes vpdpbusd takes: INT8 codes + 128 at w; INT4 32 bytes at w,
// the lower nibbles (even columns) then the upper ones (odd columns).
template <bool U4>
__attribute__((always_inline)) inline __m512i load_dot(const unsigned char* w) {
  if constexpr (U4) {
    const __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);  // upper half >> 4
    return _mm512_and_si512(_mm512_srlv_epi16(b, shift), _mm512_set1_epi8(0x0f));
  } else {
    return _mm512_xor_si512(_mm512_loadu_si512(w), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
}

// Software prefetch of W: into L1 2 KB ahead (1 KB, the E4M3 kernel's, left INT4 at 18-21 GB/s
// of 30 in matmul_bench, 2 KB 22-24, 4 KB worse), and into L2 8 KB ahead (INT4 decode of
// synthetic:llama3-1b with its LM head: 28.6-29.4 -> 34.6 tok/s; 16 KB 32.3).
constexpr int64_t kAhead = 2048;

// Rows [n0, n1) against MX quantized x rows, x blocks of XB columns: per block the exact int32
// dot, converted and scaled by s · sx in one FMA; then the corrections s · off · xs of all
// segments as vectors (one scalar per segment measured a third of the INT4 kernel's time).
template <bool U4, int MX, int XB>
void rows(const MatmulProblem& p, int64_t n0, int64_t n1, const signed char* q, const float* sx, const float* xs) {
  const int64_t K = p.K, nb = K / XB;
  const int64_t seg = p.scale.cols < K ? p.scale.cols : K;  // a multiple of XB
  const int64_t bps = seg / XB, nseg = (K + seg - 1) / seg;
  const int64_t row_bytes = U4 ? K / 2 : K;
  constexpr int64_t kDotBytes = U4 ? 32 : 64, kBlockBytes = kDotBytes * (XB / kDot);
  for (int64_t n = n0; n < n1; ++n) {
    const unsigned char* w = static_cast<const unsigned char*>(p.w) + n * row_bytes;
    const int64_t srow = (n / p.scale.rows) * p.scale.ld;
    __m512 total[MX];
    GALE_UNROLL_ALL
    for (int m = 0; m < MX; ++m) total[m] = _mm512_setzero_ps();
    for (int64_t b0 = 0, si = 0; b0 < nb; b0 += bps, ++si) {
      const int64_t b1 = b0 + bps < nb ? b0 + bps : nb;
      const float s = p.scale.s[srow + si];
      for (int64_t b = b0; b < b1; ++b) {
        const unsigned char* wb = w + b * kBlockBytes;
        GALE_UNROLL_ALL
        for (int64_t off = 0; off < kBlockBytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(wb + off) + kAhead, _MM_HINT_T0),
              _mm_prefetch(reinterpret_cast<const char*>(wb + off) + 4 * kAhead, _MM_HINT_T1);
        __m512i wv[XB / kDot];
        GALE_UNROLL_ALL
        for (int h = 0; h < XB / kDot; ++h) wv[h] = load_dot<U4>(wb + h * kDotBytes);
        GALE_UNROLL_ALL
        for (int m = 0; m < MX; ++m) {
          const signed char* qm = q + m * K + b * XB;
          __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_loadu_si512(qm));
          GALE_UNROLL_ALL
          for (int h = 1; h < XB / kDot; ++h) d = _mm512_dpbusd_epi32(d, wv[h], _mm512_loadu_si512(qm + h * kDot));
          total[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(s * sx[m * nb + b]), total[m]);
        }
      }
    }
    // The corrections Σ_segments s · off · xs, 16 segments at a time.
    const float* srow_s = p.scale.s + srow;
    const unsigned char* zrow = U4 && p.scale.zero ? p.scale.zero + srow : nullptr;
    __m512 cv[MX];
    GALE_UNROLL_ALL
    for (int m = 0; m < MX; ++m) cv[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < nseg; g += 16) {
      const __mmask16 mask = nseg - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nseg - g)) - 1);
      __m512 so = _mm512_maskz_loadu_ps(mask, srow_s + g);
      if (!U4) so = _mm512_mul_ps(so, _mm512_set1_ps(128.0f));
      else if (zrow) so = _mm512_mul_ps(so, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, zrow + g))));
      else so = _mm512_mul_ps(so, _mm512_set1_ps(8.0f));
      GALE_UNROLL_ALL
      for (int m = 0; m < MX; ++m) cv[m] = _mm512_fmadd_ps(so, _mm512_maskz_loadu_ps(mask, xs + m * nseg + g), cv[m]);
    }
    GALE_UNROLL_ALL
    for (int m = 0; m < MX; ++m) {
      float v = _mm512_reduce_add_ps(_mm512_sub_ps(total[m], cv[m]));  // one reduction for both
      if (p.bias) v += p.bias[n];
      float* out = p.y + m * p.ldy + n;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

template <bool U4, int XB>
void run(const MatmulProblem& p, int64_t n0, int64_t n1, const signed char* q, const float* sx, const float* xs) {
  switch (p.M) {
    case 1: return rows<U4, 1, XB>(p, n0, n1, q, sx, xs);
    case 2: return rows<U4, 2, XB>(p, n0, n1, q, sx, xs);
    case 3: return rows<U4, 3, XB>(p, n0, n1, q, sx, xs);
    default: return rows<U4, 4, XB>(p, n0, n1, q, sx, xs);
  }
}

}  // namespace

bool int_a8_takes(const MatmulProblem& p) {
  if (p.wk != WKind::I8 && p.wk != WKind::U4) return false;
  if (p.M < 1 || p.M > kMatvecMaxRows || p.K % kDot != 0) return false;
  return p.scale.cols >= p.K || p.scale.cols % kDot == 0;
}

// x blocks of 128 columns where the segments allow (half the conversions and FMAs of 64), else 64.
bool int_a8_matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  const int64_t K = p.K;
  const int64_t seg = p.scale.cols < K ? p.scale.cols : K;
  const int64_t xb = seg % 128 == 0 && K % 128 == 0 ? 128 : 64;
  const int64_t nb = K / xb, nseg = (K + seg - 1) / seg;
  char* buf = static_cast<char*>(t_a8.get(p.M * (K + (nb + nseg) * 4)));
  if (!buf) return false;
  signed char* q = reinterpret_cast<signed char*>(buf);
  float* sx = reinterpret_cast<float*>(buf + p.M * K);  // K a multiple of 64: aligned
  float* xs = sx + p.M * nb;
  const bool u4 = p.wk == WKind::U4;
  for (int64_t m = 0; m < p.M; ++m) {
    if (xb == 128) quantize_row<128>(p.x + m * p.ldx, K, seg, u4, q + m * K, sx + m * nb, xs + m * nseg);
    else quantize_row<64>(p.x + m * p.ldx, K, seg, u4, q + m * K, sx + m * nb, xs + m * nseg);
  }
  if (u4) xb == 128 ? run<true, 128>(p, n0, n1, q, sx, xs) : run<true, 64>(p, n0, n1, q, sx, xs);
  else xb == 128 ? run<false, 128>(p, n0, n1, q, sx, xs) : run<false, 64>(p, n0, n1, q, sx, xs);
  return true;
}

}  // namespace gale::cpu::detail
