// Linear layers on the CPU: y = x · Wᵀ (+ bias), weights kept in their stored dtype.
#pragma once
#include <cstdint>
#include <span>

#include "core/dtype.h"

namespace gale::cpu {

// x: [M, K] f32, row stride ldx (elements)
// W: [N, K] row-major in dtype wdt (nn.Linear layout: one row per output feature)
// bias: [N] f32 or nullptr
// y: [M, N] f32, row stride ldy; overwritten (y += ... when accumulate is true)
// M == 1 is the bandwidth-bound decode path; larger M is the compute-bound prefill path.
// Multi-threaded through parallel_for; SIMD path chosen at run time (AVX-512 / AVX2+FMA+F16C / scalar).
// Scales of quantized weights (FP8 formats): element (n, k) of W counts as
// W[n, k] · s[(n / rows) · ld + k / cols], that product rounded to f32 (the weight an fp32
// dequantization gives). Per tensor: rows ≥ N, cols ≥ K; per channel: rows 1, cols ≥ K; per
// group of g columns: rows 1, cols g; per g × g block: rows = cols = g, ld = ceil(K / g).
// A cols < K must be a multiple of 16. s == nullptr: the stored values are the weights.
//
// Integer weights (model/weights.h WeightScheme): wdt I8 (int8 codes), or U8 with u4 set (two
// 4-bit codes per byte, the even column in the lower nibble, rows of K / 2 bytes, K even);
// scales required, per channel or per group of a multiple of 32 columns; element (n, k)
// counts as f32((q − z) · s) with z = zero[the scale's index] (U4 with zero points), 8 (U4
// without) or 0 (I8): kernels/ref/matmul_ref.h matmul_int. The products are exact f32
// products of x and those weights (W8A16 / W4A16).
struct WeightScales {
  const float* s = nullptr;
  int64_t rows = 1, cols = 1, ld = 1;
  const uint8_t* zero = nullptr;  // U4 zero points, laid out as s
  bool u4 = false;                // U8 weights are packed 4-bit codes
};

void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate = false, const WeightScales& scales = {});

// One product of matmul_multi: y = x · Wᵀ (+ bias), the same meaning as matmul's arguments.
struct MatmulTarget {
  const void* w;       // [n, K] row-major in dtype
  DType dtype;
  int64_t n;           // output features (rows of w)
  const float* bias;   // [n] f32 or nullptr
  float* y;            // [M, n] f32, row stride ldy
  int64_t ldy;
  bool accumulate = false;  // y += x · Wᵀ (+ bias) instead of y =
  WeightScales scales = {};
};

// Several products of the same x: [M, K] f32 (row stride ldx), e.g. q/k/v or gate/up.
// x is packed once and the threads split the union of all targets' output rows, so this is
// faster than one matmul per target; each target's y is bitwise what matmul gives for it.
// The targets' y must not overlap each other or x.
void matmul_multi(const float* x, int64_t ldx, int64_t M, int64_t K,
                  std::span<const MatmulTarget> targets);

// Which SIMD path matmul uses on this machine ("avx512bf16", "avx512", "avx2", "scalar").
const char* matmul_isa();

}  // namespace gale::cpu
