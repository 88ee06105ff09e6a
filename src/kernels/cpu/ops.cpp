#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

// Plain loops that GCC vectorizes; target_clones builds each for AVX-512, AVX2 and baseline
// and picks one at load time, so the binary still runs on any x86-64.
#if defined(__x86_64__) && !defined(__clang__)
#define GALE_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GALE_SIMD_CLONES
#endif

namespace gale::cpu {

GALE_SIMD_CLONES float dot_f32(const float* a, const float* b, int64_t n) {
  // 8 independent partial sums: vectorizes without -ffast-math and keeps the sum order fixed.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

GALE_SIMD_CLONES void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

static void row_to_f32(const void* base, DType dt, int64_t row, int64_t n, float* out) {
  const uint8_t* p = static_cast<const uint8_t*>(base) + size_t(row) * size_t(n) * dtype_size(dt);
  switch (dt) {
    case DType::F32: std::memcpy(out, p, size_t(n) * 4); break;
    case DType::BF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h[i]);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) out[i] = load_as_f32(p, dt, size_t(i));
  }
}

void embedding(const int32_t* ids, int64_t n_tokens, const void* emb, DType dt, int64_t hidden, float* out) {
  for (int64_t t = 0; t < n_tokens; ++t) row_to_f32(emb, dt, ids[t], hidden, out + t * hidden);
}

// Element-wise ops below this many elements run on the calling thread: waking the pool
// (~1-2 µs) costs more than the work.
constexpr int64_t kMinParallelElems = 65536;

// Runs rows(b, e, thread) over [0, n) rows of `row_elems` elements each: on the calling
// thread when the whole job is small, else split over the pool in chunks of at least
// kMinParallelElems / 4 elements. Each row is computed the same way either way.
template <typename Fn>
void for_rows(int64_t n, int64_t row_elems, const Fn& rows) {
  const int64_t elems = n * std::max<int64_t>(1, row_elems);
  if (elems < kMinParallelElems) {
    rows(int64_t(0), n, 0);
    return;
  }
  const int64_t min_rows = std::max<int64_t>(1, kMinParallelElems / 4 / std::max<int64_t>(1, row_elems));
  parallel_for(n, rows, min_rows);
}

void rmsnorm(const float* x, int64_t ldx, int64_t n, int64_t d, const float* w, float eps, float* out, int64_t ldo) {
  for_rows(n, d, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * ldx;
      float* o = out + r * ldo;
      float ss = dot_f32(xr, xr, d);
      float inv = 1.0f / std::sqrt(ss / float(d) + eps);
      for (int64_t i = 0; i < d; ++i) o[i] = w[i] * (xr[i] * inv);
    }
  });
}

void rope_apply(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim,
                const float* cos, const float* sin) {
  const int64_t half = rot_dim / 2;
  for_rows(n_tokens, n_heads * rot_dim, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + t * ld + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          float a = v[i], b2 = v[i + half];
          v[i] = a * c[i] - b2 * s[i];
          v[i + half] = b2 * c[i] + a * s[i];
        }
      }
    }
  });
}

GALE_SIMD_CLONES static void silu_mul_row(float* g, const float* u, int64_t d) {
  for (int64_t i = 0; i < d; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void silu_mul(float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t n, int64_t d) {
  for_rows(n, d, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) silu_mul_row(gate + r * ldg, up + r * ldu, d);
  });
}

void round_to_bf16(float* x, int64_t n) {
  constexpr int64_t kChunk = 4096;  // elements per work item
  for_rows((n + kChunk - 1) / kChunk, kChunk, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b * kChunk, end = std::min(n, e * kChunk); i < end; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
  });
}

namespace {

// E4M3 byte -> f32, exact (NaN for 0x7f / 0xff), built once.
const float* e4m3_table() {
  static const std::vector<float> t = [] {
    std::vector<float> v(256);
    for (int i = 0; i < 256; ++i) v[size_t(i)] = f8e4m3_to_f32(uint8_t(i));
    return v;
  }();
  return t.data();
}

}  // namespace

void paged_kv_write(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n_tokens, int64_t start_pos,
                    const PagedKV& kv, std::span<const int32_t> block_table) {
  const int64_t row = kv.n_kv_heads * kv.head_dim;
  void* kcache = const_cast<void*>(kv.k);
  void* vcache = const_cast<void*>(kv.v);
  for (int64_t t = 0; t < n_tokens; ++t) {
    int64_t pos = start_pos + t;
    int64_t slot = int64_t(block_table[size_t(pos / kv.block_size)]) * kv.block_size + pos % kv.block_size;
    const float* kt = k + t * ldk;
    const float* vt = v + t * ldv;
    if (kv.dtype == DType::F32) {
      std::memcpy(static_cast<float*>(kcache) + slot * row, kt, size_t(row) * 4);
      std::memcpy(static_cast<float*>(vcache) + slot * row, vt, size_t(row) * 4);
    } else if (kv.dtype == DType::F8_E4M3) {
      uint8_t* kd = static_cast<uint8_t*>(kcache) + slot * row;
      uint8_t* vd = static_cast<uint8_t*>(vcache) + slot * row;
      for (int64_t i = 0; i < row; ++i) {
        kd[i] = f32_to_f8e4m3(kt[i] / kv.k_scale);
        vd[i] = f32_to_f8e4m3(vt[i] / kv.v_scale);
      }
    } else {
      uint16_t* kd = static_cast<uint16_t*>(kcache) + slot * row;
      uint16_t* vd = static_cast<uint16_t*>(vcache) + slot * row;
      for (int64_t i = 0; i < row; ++i) {
        kd[i] = f32_to_bf16(kt[i]);
        vd[i] = f32_to_bf16(vt[i]);
      }
    }
  }
}

void paged_attention(const float* q, int64_t ldq, int64_t n_tokens, int64_t n_heads, int64_t start_pos,
                     const PagedKV& kv, std::span<const int32_t> block_table, int64_t window, float scale,
                     float* out, int64_t ldo) {
  const int64_t hd = kv.head_dim;
  const int64_t group = n_heads / kv.n_kv_heads;
  const int64_t row = kv.n_kv_heads * hd;
  const int64_t max_ctx = start_pos + n_tokens;
  // An E4M3 cache is widened exactly (a table) and its scales applied outside the loops: the K
  // scale with the softmax scale, the V scale with each softmax weight.
  const bool fp8 = kv.dtype == DType::F8_E4M3;
  const float* e4m3 = fp8 ? e4m3_table() : nullptr;
  const float score_scale = fp8 ? scale * kv.k_scale : scale, v_scale = fp8 ? kv.v_scale : 1.0f;
  // One work item = (head, token), head-major: the threads' contiguous ranges then hold whole
  // heads, each with the same causal triangle of work (token-major ranges gave the last
  // thread the longest rows). Scores for a whole row are kept (two-pass softmax, exact like
  // the reference); keys are converted per row when the cache is bf16 or E4M3.
  //
  // A prefill (n_tokens > 1) over a bf16 or E4M3 cache widens its KV head's keys and values
  // once per thread and head group instead of once per query: converting each key again for
  // every query cost more than the attention itself (512-token prefill of synthetic:llama3-1b
  // with --dtype bf16: ~half the time). Same values, same operations: the result is unchanged.
  const bool widen_once = kv.dtype != DType::F32 && n_tokens > 1;
  const int64_t lo = window > 0 ? std::max<int64_t>(0, start_pos - window + 1) : 0;  // first position any token reads
  parallel_for(n_tokens * n_heads, [&](int64_t b, int64_t e, int) {
    std::vector<float> scores(static_cast<size_t>(max_ctx));
    std::vector<float> kbuf, vbuf, kall, vall;  // kall/vall: [max_ctx - lo, hd] of head group wide_g
    int64_t wide_g = -1;
    if (kv.dtype != DType::F32) { kbuf.resize(size_t(hd)); vbuf.resize(size_t(hd)); }
    for (int64_t item = b; item < e; ++item) {
      const int64_t h = item / n_tokens, t = item % n_tokens, g = h / group;
      const int64_t pos = start_pos + t;
      const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const float* qh = q + t * ldq + h * hd;
      auto convert_row = [&](int64_t p, const void* cache, float* buf) -> const float* {
        int64_t slot = int64_t(block_table[size_t(p / kv.block_size)]) * kv.block_size + p % kv.block_size;
        if (kv.dtype == DType::F32) return static_cast<const float*>(cache) + slot * row + g * hd;
        if (fp8) {
          const uint8_t* src = static_cast<const uint8_t*>(cache) + slot * row + g * hd;
          for (int64_t i = 0; i < hd; ++i) buf[i] = e4m3[src[i]];
          return buf;
        }
        const uint16_t* src = static_cast<const uint16_t*>(cache) + slot * row + g * hd;
        for (int64_t i = 0; i < hd; ++i) buf[i] = bf16_to_f32(src[i]);
        return buf;
      };
      if (widen_once && g != wide_g) {
        kall.resize(size_t((max_ctx - lo) * hd));
        vall.resize(kall.size());
        for (int64_t p = lo; p < max_ctx; ++p) {
          convert_row(p, kv.k, kall.data() + (p - lo) * hd);
          convert_row(p, kv.v, vall.data() + (p - lo) * hd);
        }
        wide_g = g;
      }
      auto key_row = [&](int64_t p, const void* cache, float* buf) -> const float* {
        if (widen_once) return (cache == kv.k ? kall : vall).data() + (p - lo) * hd;
        return convert_row(p, cache, buf);
      };
      float m = -INFINITY;
      for (int64_t p = first; p <= pos; ++p) {
        float s = dot_f32(qh, key_row(p, kv.k, kbuf.data()), hd) * score_scale;
        scores[size_t(p - first)] = s;
        m = std::max(m, s);
      }
      float denom = 0.0f;
      for (int64_t p = first; p <= pos; ++p) {
        float w = std::exp(scores[size_t(p - first)] - m);
        scores[size_t(p - first)] = w;
        denom += w;
      }
      float* o = out + t * ldo + h * hd;
      std::fill(o, o + hd, 0.0f);
      const float inv = v_scale / denom;
      for (int64_t p = first; p <= pos; ++p)
        axpy_f32(scores[size_t(p - first)] * inv, key_row(p, kv.v, vbuf.data()), o, hd);
    }
  });
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

}  // namespace gale::cpu
