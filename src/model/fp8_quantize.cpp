#include "model/fp8_quantize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace gale {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row r of the source as f32 (exact: every source dtype widens exactly).
void widen_row(const void* src, DType dt, int64_t ld, int64_t r, int64_t cols, float* out) {
  const auto* row = static_cast<const uint8_t*>(src) + size_t(r) * size_t(ld) * dtype_size(dt);
  for (int64_t c = 0; c < cols; ++c) out[c] = load_as_f32(row, dt, size_t(c));
}

float scale_of(float amax) { return amax > 0 && std::isfinite(amax) ? amax / kF8E4M3Max : 1.0f; }

// std::max keeps the running value against NaN: a NaN weight does not poison its scale.
float amax_of(const float* x, int64_t n) {
  float a = 0;
  for (int64_t i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

void check_args(DType dt, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block) {
  GALE_ASSERT(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16);
  GALE_ASSERT(rows >= 0 && cols >= 0 && ld >= cols && (g != Fp8Granularity::Block || block > 0));
}

// Rows per parallel_for item: enough work (~4k values) to be worth a hand-off.
int64_t min_rows(int64_t cols) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)); }

}  // namespace

int64_t fp8_scale_count(Fp8Granularity g, int64_t rows, int64_t cols, int64_t block) {
  switch (g) {
    case Fp8Granularity::Tensor: return 1;
    case Fp8Granularity::Channel: return rows;
    case Fp8Granularity::Block: return ceil_div(rows, block) * ceil_div(cols, block);
  }
  return 0;
}

void fp8_scales(const void* src, DType dt, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block,
                float* scales) {
  check_args(dt, rows, cols, ld, g, block);
  switch (g) {
    case Fp8Granularity::Channel:
      parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
        std::vector<float> x(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          widen_row(src, dt, ld, r, cols, x.data());
          scales[r] = scale_of(amax_of(x.data(), cols));
        }
      }, min_rows(cols));
      break;
    case Fp8Granularity::Tensor: {
      std::vector<float> partial(size_t(num_threads()), 0.0f);
      parallel_for(rows, [&](int64_t r0, int64_t r1, int t) {
        std::vector<float> x(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          widen_row(src, dt, ld, r, cols, x.data());
          partial[size_t(t)] = std::max(partial[size_t(t)], amax_of(x.data(), cols));
        }
      }, min_rows(cols));
      scales[0] = scale_of(*std::max_element(partial.begin(), partial.end()));
      break;
    }
    case Fp8Granularity::Block: {
      const int64_t nbc = ceil_div(cols, block);
      parallel_for(ceil_div(rows, block), [&](int64_t b0, int64_t b1, int) {  // one block row per item
        std::vector<float> x(static_cast<size_t>(cols));
        for (int64_t b = b0; b < b1; ++b) {
          float* s = scales + size_t(b * nbc);
          std::fill(s, s + nbc, 0.0f);
          for (int64_t r = b * block; r < std::min(rows, (b + 1) * block); ++r) {
            widen_row(src, dt, ld, r, cols, x.data());
            for (int64_t j = 0; j < nbc; ++j)
              s[j] = std::max(s[j], amax_of(x.data() + j * block, std::min(block, cols - j * block)));
          }
          for (int64_t j = 0; j < nbc; ++j) s[j] = scale_of(s[j]);
        }
      });
      break;
    }
  }
}

void fp8_encode(const void* src, DType dt, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block,
                const float* scales, uint8_t* codes) {
  check_args(dt, rows, cols, ld, g, block);
  const int64_t nbc = g == Fp8Granularity::Block ? ceil_div(cols, block) : 1;
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> x(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      widen_row(src, dt, ld, r, cols, x.data());
      uint8_t* out = codes + size_t(r) * size_t(cols);
      switch (g) {
        case Fp8Granularity::Tensor:
        case Fp8Granularity::Channel: {
          const float s = scales[g == Fp8Granularity::Channel ? r : 0];
          for (int64_t c = 0; c < cols; ++c) out[c] = f32_to_f8e4m3(x[size_t(c)] / s);
          break;
        }
        case Fp8Granularity::Block: {
          const float* s = scales + size_t(r / block * nbc);
          for (int64_t c = 0; c < cols; ++c) out[c] = f32_to_f8e4m3(x[size_t(c)] / s[c / block]);
          break;
        }
      }
    }
  }, min_rows(cols));
}

void quantize_fp8(const void* src, DType dt, int64_t rows, int64_t cols, int64_t ld, Fp8Granularity g, int64_t block,
                  uint8_t* codes, float* scales) {
  fp8_scales(src, dt, rows, cols, ld, g, block, scales);
  fp8_encode(src, dt, rows, cols, ld, g, block, scales, codes);
}

}  // namespace gale
