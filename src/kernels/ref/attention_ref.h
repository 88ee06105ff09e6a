// Scalar reference for paged attention (kernels/cpu paged_kv_write + paged_attention,
// kernels/cuda kv_cache_write, rope_kv_write, decode_attention and prefill_attention): the
// specification their tests compare against.
//
// The cache is [num_blocks, block_size, n_kv_heads, head_dim] for K and for V; position p of a
// sequence lives in block block_table[p / block_size], row p % block_size. Query head h reads
// KV head h / (n_heads / n_kv_heads) (GQA). Token i of a step sits at position start_pos + i
// and attends positions [max(0, pos - window + 1), pos] (window 0: [0, pos]; causal).
//
// An F8_E4M3 cache holds x / scale rounded to the nearest E4M3 value (saturating at ±448;
// core/dtype.h f32_to_f8e4m3), one scale per layer for K and one for V, and is read back as
// stored * scale. The kernels must store the same bytes for the same f32 input (the division is
// IEEE f32, as here) and may apply the scales anywhere in the arithmetic (the CUDA kernels fold
// the K scale into the softmax scale and the V scale into the output).
#pragma once
#include <cstdint>
#include <span>

#include "core/dtype.h"

namespace gale::ref {

struct PagedCache {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::F32;  // F32, BF16 (rounded to nearest even on write) or F8_E4M3
  int64_t block_size = 0, n_kv_heads = 0, head_dim = 0;
  float k_scale = 1.0f, v_scale = 1.0f;  // F8_E4M3: real value = stored * scale
};

// Writes the K/V rows of n tokens at positions start_pos.. into the cache (strides ldk, ldv).
void paged_kv_write(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n, int64_t start_pos,
                    const PagedCache& c, std::span<const int32_t> block_table);

// out[i, h] = sum_p softmax_p(scale * q[i, h] · K[p]) V[p] over the positions token i attends,
// in double. q, out: [n, n_heads * head_dim] (strides ldq, ldo).
void paged_attention(const float* q, int64_t ldq, int64_t n, int64_t n_heads, int64_t start_pos, const PagedCache& c,
                     std::span<const int32_t> block_table, int64_t window, float scale, float* out, int64_t ldo);

}  // namespace gale::ref
