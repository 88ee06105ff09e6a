#include "kernels/ref/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gale::ref {

namespace {

// Element index of (position, kv head, 0) in the cache.
size_t slot(const PagedCache& c, std::span<const int32_t> table, int64_t pos, int64_t kv_head) {
  const int64_t row = int64_t(table[size_t(pos / c.block_size)]) * c.block_size + pos % c.block_size;
  return size_t((row * c.n_kv_heads + kv_head) * c.head_dim);
}

void store(void* dst, DType dt, float scale, size_t i, float x) {
  if (dt == DType::F8_E4M3) static_cast<uint8_t*>(dst)[i] = f32_to_f8e4m3(x / scale);
  else if (dt == DType::BF16) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(x);
  else static_cast<float*>(dst)[i] = x;
}

double load(const void* src, DType dt, float scale, size_t i) {
  if (dt == DType::F8_E4M3) return double(f8e4m3_to_f32(static_cast<const uint8_t*>(src)[i])) * double(scale);
  return double(load_as_f32(src, dt, i));
}

}  // namespace

void paged_kv_write(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n, int64_t start_pos,
                    const PagedCache& c, std::span<const int32_t> block_table) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t g = 0; g < c.n_kv_heads; ++g) {
      const size_t at = slot(c, block_table, start_pos + t, g);
      for (int64_t i = 0; i < c.head_dim; ++i) {
        store(c.k, c.dtype, c.k_scale, at + size_t(i), k[t * ldk + g * c.head_dim + i]);
        store(c.v, c.dtype, c.v_scale, at + size_t(i), v[t * ldv + g * c.head_dim + i]);
      }
    }
}

void paged_attention(const float* q, int64_t ldq, int64_t n, int64_t n_heads, int64_t start_pos, const PagedCache& c,
                     std::span<const int32_t> block_table, int64_t window, float scale, float* out, int64_t ldo) {
  const int64_t hd = c.head_dim, group = n_heads / c.n_kv_heads;
  std::vector<double> s, acc(static_cast<size_t>(hd));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start_pos + t;
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t g = h / group;
      const float* qh = q + t * ldq + h * hd;
      s.assign(size_t(pos - first + 1), 0.0);
      for (int64_t p = first; p <= pos; ++p) {
        const size_t at = slot(c, block_table, p, g);
        double dot = 0.0;
        for (int64_t i = 0; i < hd; ++i) dot += double(qh[i]) * load(c.k, c.dtype, c.k_scale, at + size_t(i));
        s[size_t(p - first)] = dot * double(scale);
      }
      const double m = *std::max_element(s.begin(), s.end());
      double den = 0.0;
      for (double& e : s) den += (e = std::exp(e - m));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = first; p <= pos; ++p) {
        const size_t at = slot(c, block_table, p, g);
        const double w = s[size_t(p - first)] / den;
        for (int64_t i = 0; i < hd; ++i) acc[size_t(i)] += w * load(c.v, c.dtype, c.v_scale, at + size_t(i));
      }
      for (int64_t i = 0; i < hd; ++i) out[t * ldo + h * hd + i] = float(acc[size_t(i)]);
    }
  }
}

}  // namespace gale::ref
