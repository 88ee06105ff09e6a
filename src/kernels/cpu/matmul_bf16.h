// bf16 × bf16 linear layers for `--dtype bf16` on the CPU: the products a bf16 model computes.
//
// With bf16 activations each x element is a bf16 value, and a bf16 weight times a bf16 value is
// exact in f32; so the GEMM can run on AVX512-BF16's vdpbf16ps or AMX-BF16's tile products
// (tdpbf16ps) instead of widening both to f32, which is what `--dtype bf16` prefill gains.
// The default f32 path (kernels/cpu/matmul.h: exact f32 products of f32 activations) is
// untouched.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace gale::cpu {

// For each target: y = bf16(x) · Wᵀ (+ bias) (+ y when accumulate), where bf16(x) rounds every
// x element to bf16 (to nearest, ties to even; NaN stays NaN), the products of the rounded x
// with the stored weights are exact and summed in f32, in an order that is not matmul's (nor
// the same for every path). Arguments as matmul_multi (kernels/cpu/matmul.h).
//
// Prefill (M > 4) over unscaled BF16 weights runs the bf16 dot-product kernels; everything
// else (decode, other dtypes, scaled weights) rounds x and calls matmul_multi, the same
// definition through the exact kernels.
void matmul_multi_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, std::span<const MatmulTarget> targets);

// The bf16 prefill paths this machine can run: a subset of {"amx", "avx512bf16"}, then "exact"
// (round x, then matmul_multi's f32 kernels), always present.
std::vector<std::string> matmul_bf16_paths_available();

// The path matmul_multi_bf16 takes for bf16 prefill. Default: "amx" where the CPU and the OS
// allow it, else "exact" (vdpbf16ps measured slower than exact where it was measured; see
// matmul_bf16.cpp); GALE_BF16_GEMM=amx|avx512bf16|exact overrides.
const char* matmul_bf16_path();

// Makes matmul_multi_bf16 use `name` from now on (tests, benchmarks). Throws gale::Error for an
// unknown name or one this machine cannot run. Not to be called while a matmul is running.
void set_matmul_bf16_path(std::string_view name);

}  // namespace gale::cpu
