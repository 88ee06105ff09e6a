#include "model/int_quantize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace gale {

namespace {

int64_t group_cols(const IntQuantSpec& q, int64_t cols) { return q.group > 0 ? q.group : std::max<int64_t>(cols, 1); }

void check_spec(const IntQuantSpec& q, int64_t cols) {
  GALE_ASSERT(q.bits == 8 || q.bits == 4);
  GALE_ASSERT(q.group >= 0);
  GALE_ASSERT(q.bits == 4 || q.symmetric);
  GALE_ASSERT(q.bits == 8 || cols % 2 == 0);
}

// One row of codes, scales and zero points.
void quantize_row(const float* w, int64_t cols, const IntQuantSpec& q, uint8_t* codes, float* scales, uint8_t* zeros) {
  const int64_t g = group_cols(q, cols);
  const float qmax = q.bits == 8 ? 127.0f : 7.0f;
  for (int64_t c0 = 0, gi = 0; c0 < cols; c0 += g, ++gi) {
    const int64_t c1 = std::min(cols, c0 + g);
    // std::max / std::min keep the running value against NaN.
    float lo = 0, hi = 0;
    for (int64_t c = c0; c < c1; ++c) lo = std::min(lo, w[c]), hi = std::max(hi, w[c]);
    float s, z = 0;
    if (q.symmetric) {
      const float amax = std::max(-lo, hi);
      s = amax > 0 && std::isfinite(amax) ? amax / qmax : 1.0f;
    } else {
      const float range = hi - lo;
      s = range > 0 && std::isfinite(range) ? range / 15.0f : 1.0f;
      z = std::clamp(std::nearbyint(-lo / s), 0.0f, 15.0f);
      zeros[gi] = uint8_t(z);
    }
    scales[gi] = s;
    for (int64_t c = c0; c < c1; ++c) {
      float v = std::nearbyint(w[c] / s);
      if (std::isnan(v)) v = 0;
      int code;
      if (q.bits == 8) {
        code = int(std::clamp(v, -128.0f, 127.0f));
        codes[c] = uint8_t(int8_t(code));
        continue;
      }
      code = q.symmetric ? int(std::clamp(v, -8.0f, 7.0f)) + 8 : int(std::clamp(v + z, 0.0f, 15.0f));
      uint8_t& byte = codes[c / 2];
      byte = c % 2 == 0 ? uint8_t((byte & 0xf0) | code) : uint8_t((byte & 0x0f) | (code << 4));
    }
  }
}

}  // namespace

int64_t int_scales_per_row(const IntQuantSpec& q, int64_t cols) {
  return q.group > 0 ? (cols + q.group - 1) / q.group : 1;
}

int64_t int_code_bytes_per_row(const IntQuantSpec& q, int64_t cols) { return q.bits == 8 ? cols : cols / 2; }

void quantize_int(const void* src, DType dt, int64_t rows, int64_t cols, int64_t ld, const IntQuantSpec& q,
                  const float* col_scale, uint8_t* codes, float* scales, uint8_t* zeros) {
  GALE_ASSERT(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16);
  GALE_ASSERT(rows >= 0 && cols >= 0 && ld >= cols);
  check_spec(q, cols);
  GALE_ASSERT(q.symmetric || zeros);
  const int64_t spr = int_scales_per_row(q, cols), bpr = int_code_bytes_per_row(q, cols);
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        std::vector<float> w(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          const auto* row = static_cast<const uint8_t*>(src) + size_t(r) * size_t(ld) * dtype_size(dt);
          for (int64_t c = 0; c < cols; ++c) {
            w[size_t(c)] = load_as_f32(row, dt, size_t(c));
            if (col_scale) w[size_t(c)] *= col_scale[c];
          }
          quantize_row(w.data(), cols, q, codes + r * bpr, scales + r * spr, q.symmetric ? nullptr : zeros + r * spr);
        }
      },
      std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)));
}

float int_weight(const uint8_t* codes, const float* scales, const uint8_t* zeros, const IntQuantSpec& q, int64_t cols,
                 int64_t r, int64_t c) {
  const int64_t spr = int_scales_per_row(q, cols), gi = r * spr + (q.group > 0 ? c / q.group : 0);
  if (q.bits == 8) return float(int8_t(codes[r * cols + c])) * scales[gi];
  const uint8_t byte = codes[r * (cols / 2) + c / 2];
  const int code = c % 2 == 0 ? byte & 0xf : byte >> 4;
  const int z = q.symmetric ? 8 : zeros[gi];
  return float(code - z) * scales[gi];
}

}  // namespace gale
