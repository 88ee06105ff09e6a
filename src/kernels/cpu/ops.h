// Element-wise and attention kernels of the CPU backend (f32 activations).
// The matrix products live in matmul.h.
#pragma once
#include <cstdint>
#include <span>

#include "core/dtype.h"

namespace gale::cpu {

// SIMD helpers (compiled for AVX-512 / AVX2 / baseline, chosen at run time).
float dot_f32(const float* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);  // y += a * x

// out[t, :] = row ids[t] of the embedding table emb [vocab, hidden] (any float dtype) as f32.
void embedding(const int32_t* ids, int64_t n_tokens, const void* emb, DType dt, int64_t hidden, float* out);

// out = x / sqrt(mean(x²) + eps) * w over rows of length d; x: [n, d] (stride ldx), w: [d].
// out may alias x.
void rmsnorm(const float* x, int64_t ldx, int64_t n, int64_t d, const float* w, float eps, float* out, int64_t ldo);

// Rotates the first rot_dim entries of each head in HF's "rotate_half" layout:
// x: [n_tokens, n_heads, head_dim] (row stride ld), cos/sin: [n_tokens, rot_dim/2].
void rope_apply(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim,
                const float* cos, const float* sin);

// gate[i] = silu(gate[i]) * up[i] over [n, d] rows (strides ldg, ldu).
void silu_mul(float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t n, int64_t d);

// Rounds every element to the nearest bf16 value (--dtype bf16 activations).
void round_to_bf16(float* x, int64_t n);

// Index of the largest of x[0..n); the first one on ties (as torch.argmax).
int32_t argmax(const float* x, int64_t n);

// Paged attention over a block table for one sequence's new tokens.
struct PagedKV {
  const void* k;  // [num_blocks, block_size, n_kv_heads, head_dim] of dtype
  const void* v;  // same layout
  DType dtype;    // F32, BF16 or F8_E4M3
  int64_t block_size;
  int64_t n_kv_heads;
  int64_t head_dim;
  float k_scale = 1.0f, v_scale = 1.0f;  // F8_E4M3: real value = stored * scale (ignored otherwise)
};
// q: [n_tokens, n_heads, head_dim] (row stride ldq); token i sits at position start_pos + i and
// attends positions [max(0, pos - window + 1), pos] (window 0 = unlimited) read through
// block_table. out: [n_tokens, n_heads, head_dim] (row stride ldo). Softmax in f32 with scale.
void paged_attention(const float* q, int64_t ldq, int64_t n_tokens, int64_t n_heads, int64_t start_pos,
                     const PagedKV& kv, std::span<const int32_t> block_table, int64_t window, float scale,
                     float* out, int64_t ldo);

// Writes k/v rows of n_tokens tokens at positions start_pos.. into the paged cache (kv.k and
// kv.v written through): f32 as is, bf16 rounded to nearest even, F8_E4M3 as
// f32_to_f8e4m3(x / scale) (kernels/ref/attention_ref.h).
void paged_kv_write(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t n_tokens, int64_t start_pos,
                    const PagedKV& kv, std::span<const int32_t> block_table);

}  // namespace gale::cpu
