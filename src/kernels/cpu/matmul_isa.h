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

}  // namespace gale::cpu
