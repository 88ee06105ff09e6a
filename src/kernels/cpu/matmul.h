// Linear layers on the CPU: y = x · Wᵀ (+ bias), weights kept in their stored dtype.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace gale::cpu {

// x: [M, K] f32, row stride ldx (elements)
// W: [N, K] row-major in dtype wdt (nn.Linear layout: one row per output feature)
// bias: [N] f32 or nullptr
// y: [M, N] f32, row stride ldy; overwritten (y += ... when accumulate is true)
// M == 1 is the bandwidth-bound decode path; larger M is the compute-bound prefill path.
// Multi-threaded through parallel_for; SIMD path chosen at run time (AVX-512 / AVX2+FMA+F16C / scalar).
void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate = false);

// Which SIMD path matmul uses on this machine ("avx512", "avx2", "scalar").
const char* matmul_isa();

}  // namespace gale::cpu
