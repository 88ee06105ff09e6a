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

}  // namespace gale::ref
