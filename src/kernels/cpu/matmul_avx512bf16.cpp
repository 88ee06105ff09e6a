// Decode products over E4M3 weights for CPUs with AVX512-BF16 and VBMI (Sapphire Rapids, Zen 4
// and later); everything else goes to the AVX-512 kernels. Compiled with those flags, called
// only after the run-time check in matmul.cpp.
//
// Why: widening E4M3 to f32 through f16 costs about ten vector operations per 16 weights,
// which made FP8 decode compute-bound at half the bf16 speed (bench/RESULTS.md). Here 64
// weights at a time become bf16 (every E4M3 value, subnormals and NaN included, is exactly a
// bf16) by two 128-entry byte-table lookups (vpermi2b: the low and the high byte of each
// magnitude's bf16), the sign merged in, and two byte interleaves; vdpbf16ps then multiplies
// them with x. x is split once per call into three bf16 parts, x = x1 + x2 + x3 exactly (8
// significant bits each: the 24 of an f32), so each product is the exact f32 product of the
// stored weight and x, summed in f32 as the other kernels do (a different order: not bitwise
// theirs). vdpbf16ps treats subnormal inputs as zero: an x part below 2^-126 (|x| < 2^-110)
// is lost, far below any activation's resolution.
//
// Scales: one per row (channel, tensor) multiplies the finished sum; groups or blocks of
// `cols` columns (a multiple of 64 here) scale each segment's partial sums.
#include <immintrin.h>

#include <cstdlib>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu::detail {
namespace {

// bf16 bits of E4M3 magnitude i (0..127), split into low and high bytes: 2^(e - 7) · (1 + m / 8)
// for e > 0, 2^-6 · m / 8 for e = 0, NaN for 0x7F.
struct Tables {
  alignas(64) unsigned char lo[128];
  alignas(64) unsigned char hi[128];
};
constexpr Tables make_tables() {
  Tables t{};
  for (int i = 0; i < 128; ++i) {
    const int e = i >> 3, m = i & 7;
    unsigned bits = 0;
    if (i == 0x7F) {
      bits = 0x7FC0;  // quiet NaN
    } else if (e > 0) {
      bits = unsigned(e - 7 + 127) << 7 | unsigned(m) << 4;  // exponent, then the 3 mantissa bits on top of 7
    } else if (m > 0) {
      // m / 8 · 2^-6 = m · 2^-9: normalize m (1..7) to 1.f · 2^p.
      int p = 2;
      while (!(m >> p)) --p;                      // m's top bit
      const unsigned frac = unsigned(m - (1 << p)) << (7 - p);  // the bits below it, left-aligned in 7
      bits = unsigned(p - 9 + 127) << 7 | frac;
    }
    t.lo[i] = static_cast<unsigned char>(bits & 0xFF);
    t.hi[i] = static_cast<unsigned char>(bits >> 8);
  }
  return t;
}
constexpr Tables kE4M3 = make_tables();

// x rows split into three bf16 parts each, [MX][3][K], in a per-thread buffer.
struct SplitBuffer {
  unsigned short* p = nullptr;
  long long cap = 0;
  ~SplitBuffer() { std::free(p); }
  unsigned short* get(long long n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<unsigned short*>(std::aligned_alloc(64, size_t((n * 2 + 63) / 64 * 64)));
      cap = p ? n : 0;
    }
    return p;
  }
};
thread_local SplitBuffer t_split;

// out[0..K) + out[K..2K) + out[2K..3K) == x[0..K) (K a multiple of 16).
void split_x(const float* x, int64_t K, unsigned short* out) {
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    const __m256bh a = _mm512_cvtneps_pbh(v);
    const __m512 r1 = _mm512_sub_ps(v, _mm512_cvtpbh_ps(a));
    const __m256bh b = _mm512_cvtneps_pbh(r1);
    const __m512 r2 = _mm512_sub_ps(r1, _mm512_cvtpbh_ps(b));
    const __m256bh c = _mm512_cvtneps_pbh(r2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), reinterpret_cast<const __m256i&>(a));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + K + k), reinterpret_cast<const __m256i&>(b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * K + k), reinterpret_cast<const __m256i&>(c));
  }
}

// Byte indices that interleave the low bytes l and high bytes h of 64 bf16 values into words:
// word i of the first vector is (l[i], h[i]) for i < 32, of the second for i = 32..63.
struct Interleave {
  alignas(64) unsigned char first[64];
  alignas(64) unsigned char second[64];
};
constexpr Interleave make_interleave() {
  Interleave t{};
  for (int i = 0; i < 32; ++i) {
    t.first[2 * i] = static_cast<unsigned char>(i);
    t.first[2 * i + 1] = static_cast<unsigned char>(64 + i);
    t.second[2 * i] = static_cast<unsigned char>(32 + i);
    t.second[2 * i + 1] = static_cast<unsigned char>(96 + i);
  }
  return t;
}
constexpr Interleave kInterleave = make_interleave();

struct Consts {
  __m512i lo0, lo1, hi0, hi1, il0, il1, sign;
};

// 64 E4M3 weights as two vectors of 32 bf16, in order.
__attribute__((always_inline)) inline void widen64(const Consts& c, const void* w, __m512i& w0, __m512i& w1) {
  const __m512i b = _mm512_loadu_si512(w);
  const __m512i l = _mm512_permutex2var_epi8(c.lo0, b, c.lo1);
  __m512i h = _mm512_permutex2var_epi8(c.hi0, b, c.hi1);
  h = _mm512_ternarylogic_epi32(h, b, c.sign, 0xF8);  // h | (b & 0x80): the sign
  w0 = _mm512_permutex2var_epi8(l, c.il0, h);
  w1 = _mm512_permutex2var_epi8(l, c.il1, h);
}

__attribute__((always_inline)) inline __m512 dp(__m512 acc, __m512i w, const unsigned short* x) {
  const __m512i xv = _mm512_loadu_si512(x);
  return _mm512_dpbf16_ps(acc, reinterpret_cast<const __m512bh&>(w), reinterpret_cast<const __m512bh&>(xv));
}

#define GALE_UNROLL_ALL _Pragma("GCC unroll 16")

// W is streamed one row after another, front to back (one stream is what the hardware
// prefetcher follows best; two rows side by side measured slower), with a software prefetch
// this far ahead.
constexpr int64_t kAhead = 1024;

// Row n of W against MX rows of x (split: xs[m][part][K]); NA accumulators per (x row, part)
// (two for a single x row, so that enough independent sums are in flight).
template <int MX, int NA>
void row(const MatmulProblem& p, int64_t n, const unsigned short* xs, const Consts& c) {
  const int64_t K = p.K;
  const bool scaled = p.scale.s != nullptr;
  const int64_t seg = scaled && p.scale.cols < K ? p.scale.cols : K;
  const float* srow = scaled ? p.scale.s + (n / p.scale.rows) * p.scale.ld : nullptr;
  __m512 total[MX];
  __m512 acc[MX][3][NA];
  GALE_UNROLL_ALL
  for (int m = 0; m < MX; ++m) total[m] = _mm512_setzero_ps();
  const unsigned char* w = static_cast<const unsigned char*>(p.w) + n * K;
  for (int64_t kb = 0, si = 0; kb < K; kb += seg, ++si) {
    GALE_UNROLL_ALL
    for (int m = 0; m < MX; ++m)
      GALE_UNROLL_ALL
      for (int q = 0; q < 3; ++q)
        GALE_UNROLL_ALL
        for (int a = 0; a < NA; ++a) acc[m][q][a] = _mm512_setzero_ps();
    for (int64_t k = kb; k < kb + seg; k += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k) + kAhead, _MM_HINT_T0);
      __m512i wa, wb;
      widen64(c, w + k, wa, wb);
      GALE_UNROLL_ALL
      for (int m = 0; m < MX; ++m)
        GALE_UNROLL_ALL
        for (int q = 0; q < 3; ++q) {
          const unsigned short* x = xs + (m * 3 + q) * K + k;
          acc[m][q][0] = dp(acc[m][q][0], wa, x);
          acc[m][q][NA - 1] = dp(acc[m][q][NA - 1], wb, x + 32);
        }
    }
    // The segment's sums, scaled when the scale changes along the row.
    GALE_UNROLL_ALL
    for (int m = 0; m < MX; ++m) {
      __m512 s = acc[m][0][0];
      GALE_UNROLL_ALL
      for (int a = 1; a < NA; ++a) s = _mm512_add_ps(s, acc[m][0][a]);
      GALE_UNROLL_ALL
      for (int q = 1; q < 3; ++q)
        GALE_UNROLL_ALL
        for (int a = 0; a < NA; ++a) s = _mm512_add_ps(s, acc[m][q][a]);
      total[m] = seg < K ? _mm512_fmadd_ps(s, _mm512_set1_ps(srow[si]), total[m]) : _mm512_add_ps(total[m], s);
    }
  }
  GALE_UNROLL_ALL
  for (int m = 0; m < MX; ++m) {
    float v = _mm512_reduce_add_ps(total[m]);
    if (scaled && seg == K) v *= srow[0];
    if (p.bias) v += p.bias[n];
    float* out = p.y + m * p.ldy + n;
    *out = p.accumulate ? *out + v : v;
  }
}

template <int MX>
void range(const MatmulProblem& p, int64_t n0, int64_t n1, const unsigned short* xs, const Consts& c) {
  for (int64_t n = n0; n < n1; ++n) row<MX, MX == 1 ? 2 : 1>(p, n, xs, c);
}

// Whether this kernel takes p: E4M3 in whole 64-weight blocks, scale segments of whole blocks.
bool takes(const MatmulProblem& p) {
  if (p.wk != WKind::E4M3 || p.K % 64 != 0 || p.M < 1 || p.M > kMatvecMaxRows) return false;
  return !p.scale.s || p.scale.cols >= p.K || p.scale.cols % 64 == 0;
}

void matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  if (p.int_a8 && int_a8_takes(p) && int_a8_matvec(p, n0, n1)) return;
  if (!takes(p)) return kAvx512Kernels.matvec(p, n0, n1);
  unsigned short* xs = t_split.get(p.M * 3 * p.K);
  if (!xs) return kAvx512Kernels.matvec(p, n0, n1);
  for (int64_t m = 0; m < p.M; ++m) split_x(p.x + m * p.ldx, p.K, xs + m * 3 * p.K);
  Consts c;
  c.lo0 = _mm512_load_si512(kE4M3.lo);
  c.lo1 = _mm512_load_si512(kE4M3.lo + 64);
  c.hi0 = _mm512_load_si512(kE4M3.hi);
  c.hi1 = _mm512_load_si512(kE4M3.hi + 64);
  c.il0 = _mm512_load_si512(kInterleave.first);
  c.il1 = _mm512_load_si512(kInterleave.second);
  c.sign = _mm512_set1_epi8(static_cast<char>(0x80));
  switch (p.M) {
    case 1: return range<1>(p, n0, n1, xs, c);
    case 2: return range<2>(p, n0, n1, xs, c);
    case 3: return range<3>(p, n0, n1, xs, c);
    default: return range<4>(p, n0, n1, xs, c);
  }
}

void convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc, float* wc,
                  const WScale* sc, int64_t n0) {
  kAvx512Kernels.convert_rows(w, wk, ldw, rows, k0, kc, wc, sc, n0);
}

void tile(const float* xp, int mr, const float* wc, int64_t kc, float* ct, const char* const* pf, int64_t num_pf,
          const TileOut* out) {
  kAvx512Kernels.tile(xp, mr, wc, kc, ct, pf, num_pf, out);
}

}  // namespace

// The AVX-512 kernels with this decode kernel in front (prefill, and every other dtype, theirs),
// and for integer weights with GALE_CPU_INT_A8 the VNNI one (matmul_a8_avx512bf16.cpp).
const MatmulKernels kAvx512Bf16Kernels = {"avx512bf16", 32, 12, matvec, convert_rows, tile, true};

}  // namespace gale::cpu::detail
