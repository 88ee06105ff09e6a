// Saturating int64 arithmetic for sizes computed from user input (token counts, KV bytes):
// a result past INT64_MAX becomes INT64_MAX, which every later limit check then refuses with
// a clear message instead of wrapping to a negative or small number (issue 15: `-n 2^63-1`
// wrapped prompt + max_tokens and spun forever).
#pragma once
#include <cstdint>
#include <limits>

namespace gale {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// Both operands must be >= 0.
inline int64_t add_sat(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? kInt64Max : r;
}
inline int64_t mul_sat(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? kInt64Max : r;
}
// ceil(a / b) for a >= 0, b > 0, without forming a + b - 1.
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

}  // namespace gale
