// Portable matmul kernels: the fallback for CPUs without AVX2+FMA+F16C and for GALE_ISA=scalar.
// Plain loops with several independent float accumulators, which the compiler can keep in
// SSE registers; f32 sums, like the SIMD paths.
#include <cmath>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu::detail {
namespace {

float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float half_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | man << 13);
  if (exp == 0) {  // zero or subnormal: man · 2^-24, exact in f32
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_f32(sign | (exp + 112) << 23 | man << 13);
}

float load_one(const void* w, WKind wk, int64_t i) {
  switch (wk) {
    case WKind::F32: return static_cast<const float*>(w)[i];
    case WKind::F16: return half_to_f32(static_cast<const uint16_t*>(w)[i]);
    case WKind::BF16: return bits_to_f32(uint32_t(static_cast<const uint16_t*>(w)[i]) << 16);
    case WKind::E4M3: {
      uint8_t v = static_cast<const uint8_t*>(w)[i];
      if ((v & 0x7f) == 0x7f) return NAN;
      // E4M3 shifted into f16 position has the f16 bit layout with the exponent bias 8 too high.
      float f = half_to_f32(uint16_t((v & 0x80) << 8 | (v & 0x7f) << 7));
      return f * 256.0f;
    }
    case WKind::E5M2: return half_to_f32(uint16_t(static_cast<const uint8_t*>(w)[i]) << 8);
    case WKind::I8:
    case WKind::U4: break;  // int_weight: they need their scales
  }
  return 0.0f;
}

// Weight (r, c) of an integer matrix with rows of ldw values: f32((q − z) · s), the
// definition of kernels/ref/matmul_ref.h matmul_int.
float int_weight(const void* w, WKind wk, int64_t ldw, const WScale& sc, int64_t r, int64_t c) {
  const int64_t i = (r / sc.rows) * sc.ld + c / sc.cols;
  if (wk == WKind::I8) return float(static_cast<const int8_t*>(w)[r * ldw + c]) * sc.s[i];
  const uint8_t b = static_cast<const uint8_t*>(w)[(r * ldw + c) / 2];
  const int q = c % 2 == 0 ? b & 0xf : b >> 4;
  return float(q - (sc.zero ? int(sc.zero[i]) : 8)) * sc.s[i];
}

void convert_rows(const void* w, WKind wk, int64_t ldw, int64_t rows, int64_t k0, int64_t kc,
                  float* wc, const WScale* sc, int64_t n0) {
  const char* base = static_cast<const char*>(w);
  if (wk == WKind::I8 || wk == WKind::U4) {
    // w is row n0; int_weight counts rows from there, the scales from row 0 of the matrix.
    for (int64_t j = 0; j < rows; ++j) {
      WScale s = *sc;
      s.s += ((n0 + j) / sc->rows) * sc->ld;
      if (s.zero) s.zero += ((n0 + j) / sc->rows) * sc->ld;
      s.rows = int64_t(1) << 62;  // row j's scales are s[0 .. ld)
      for (int64_t k = 0; k < kc; ++k) wc[j * kWcStride + k] = int_weight(w, wk, ldw, s, j, k0 + k);
    }
    return;
  }
  for (int64_t j = 0; j < rows; ++j) {
    const void* row = base + wk_bytes(wk, j * ldw + k0);
    if (sc && sc->s) {
      const float* srow = sc->s + ((n0 + j) / sc->rows) * sc->ld;
      for (int64_t k = 0; k < kc; ++k) wc[j * kWcStride + k] = load_one(row, wk, k) * srow[(k0 + k) / sc->cols];
    } else {
      for (int64_t k = 0; k < kc; ++k) wc[j * kWcStride + k] = load_one(row, wk, k);
    }
  }
}

// Dot product of f32 a with f32 b, eight interleaved partial sums.
float dot(const float* a, const float* b, int64_t K) {
  float s[8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int l = 0; l < 8; ++l) s[l] += a[k + l] * b[k + l];
  for (; k < K; ++k) s[k & 7] += a[k] * b[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void matvec(const MatmulProblem& p, int64_t n0, int64_t n1) {
  // Converting one W row at a time keeps the pass over W single and the buffer in L1.
  constexpr int64_t kBlock = kKc;  // convert_rows writes rows kWcStride apart; one row is used
  float wrow[kBlock];
  for (int64_t n = n0; n < n1; ++n) {
    float acc[kMatvecMaxRows] = {};
    for (int64_t k0 = 0; k0 < p.K; k0 += kBlock) {
      int64_t kc = p.K - k0 < kBlock ? p.K - k0 : kBlock;
      convert_rows(static_cast<const char*>(p.w) + wk_bytes(p.wk, n * p.K), p.wk, p.K, 1, k0, kc, wrow,
                   &p.scale, n);
      for (int64_t m = 0; m < p.M; ++m) acc[m] += dot(p.x + m * p.ldx + k0, wrow, kc);
    }
    for (int64_t m = 0; m < p.M; ++m) {
      float v = acc[m] + (p.bias ? p.bias[n] : 0.0f);
      float* out = p.y + m * p.ldy + n;
      *out = p.accumulate ? *out + v : v;
    }
  }
}

// Prefetching is left to the hardware here: a CPU on this path is slow anyway.
void tile(const float* xp, int mr, const float* wc, int64_t kc, float* ct, const char* const*,
          int64_t, const TileOut*) {
  constexpr int kNr = 4;
  for (int j = 0; j < kNr; ++j) {
    float acc[16] = {};
    for (int64_t k = 0; k < kc; ++k) {
      float b = wc[j * kWcStride + k];
      for (int i = 0; i < mr; ++i) acc[i] += xp[k * mr + i] * b;
    }
    for (int i = 0; i < mr; ++i) ct[j * mr + i] = acc[i];
  }
}

}  // namespace

const MatmulKernels kScalarKernels = {"scalar", 16, 4, matvec, convert_rows, tile, false};

}  // namespace gale::cpu::detail
