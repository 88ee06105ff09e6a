// Scalar reference for cpu::matmul: the specification its tests compare against.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace gale::ref {

// Same contract as gale::cpu::matmul (see kernels/cpu/matmul.h):
// x [M, K] f32 (row stride ldx), W [N, K] in dtype wdt, bias [N] or nullptr,
// y [M, N] (row stride ldy) = x·Wᵀ + bias (+ y when accumulate).
// Each weight is widened exactly to f32; products and sums are taken in double, then the
// result is rounded once to f32.
void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate = false);

// The same with scaled weights (quantized formats): weight (n, k) is
// f32(widened W[n, k] · s[(n / srows) · sld + k / scols]), the product rounded to f32 as an
// fp32 dequantization rounds it; then products and sums in double as above.
void matmul_scaled(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
                   const float* s, int64_t srows, int64_t scols, int64_t sld, const float* bias, float* y,
                   int64_t ldy, bool accumulate = false);

// The bf16-activation product (cpu::matmul_multi_bf16, `--dtype bf16`): each x element first
// rounded to the nearest bf16 (ties to the even significand; NaN stays NaN, overflow gives ±inf),
// then as matmul above (exact products, sums in double, one rounding to f32).
void matmul_bf16x(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
                  const float* bias, float* y, int64_t ldy, bool accumulate = false);

// x rounded to the nearest bf16 as matmul_bf16x rounds it, returned as f32.
float round_bf16(float x);

// Integer weights (model/weights.h WeightScheme, the layout model/int_quantize.h writes):
// weight (n, k) = f32((q − z) · s) with
//   bits 8: q = int8 codes[n · K + k], z = 0;
//   bits 4: q = nibble k % 2 (lower first) of codes[n · K / 2 + k / 2], z = zero[i] or 8 when
//           zero is null (symmetric);
//   s = scale[i], i = n · ceil(K / group) + k / group (group 0: one scale per row, i = n).
// in_perm ([K] or null): stored column k holds input feature in_perm[k], so
// y = x[:, in_perm] · Wᵀ + bias (+ y). Products and sums in double, as above.
void matmul_int(const float* x, int64_t ldx, int64_t M, int64_t K, const uint8_t* codes, int bits, int64_t N,
                const float* scale, const uint8_t* zero, int64_t group, const int32_t* in_perm, const float* bias,
                float* y, int64_t ldy, bool accumulate = false);
// The weight (n, k) of such a matrix, as defined above.
float int_weight_ref(const uint8_t* codes, int bits, int64_t K, const float* scale, const uint8_t* zero,
                     int64_t group, int64_t n, int64_t k);

}  // namespace gale::ref
