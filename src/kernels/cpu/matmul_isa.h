// Choosing matmul's SIMD path by hand, for tests and benchmarks.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace gale::cpu {

// The paths this CPU can run, best first: a subset of {"avx512bf16", "avx512", "avx2", "scalar"}.
std::vector<std::string> matmul_isas_available();

// Makes matmul use `name` from now on (the default is the best available, or GALE_ISA when
// set). Throws gale::Error for an unknown name or one this CPU cannot run. Not to be called
// while a matmul is running.
void set_matmul_isa(std::string_view name);

// Integer weights' decode (M <= 4) with x quantized to int8 per block of 64 columns and VNNI
// dot products (W8A8 / W4A8): faster, and not the reference's numerics, so off unless asked
// for (GALE_CPU_INT_A8=1 at start-up, or this). Only the avx512bf16 path has it; others, and
// shapes it does not take (K or a group not a multiple of 64), stay exact.
void set_matmul_int_a8(bool on);
bool matmul_int_a8();

}  // namespace gale::cpu
