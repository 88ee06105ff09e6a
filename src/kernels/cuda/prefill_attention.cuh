// Prefill attention, flash-attention style (tensor cores, online softmax), causal, varlen:
// sequence s has n_q = cu_seqlens_q[s+1] - cu_seqlens_q[s] new tokens at positions
// start_pos[s] .. start_pos[s] + n_q - 1, whose K/V are already in the paged cache (write them
// with kv_cache_write first) after a cached prefix of start_pos[s] tokens (prefix-cache hits,
// chunked prefill). Query at position P attends keys [max(0, P - window + 1), P] (window 0 =
// unlimited), read through the block table. K/V layout of model/kv_cache.h.
//
// q bf16, K/V bf16 or F8_E4M3; P is rounded to bf16 before the P·V product, accumulation in f32.
// An E4M3 tile is widened to bf16 (exactly) on its way into shared memory, loaded into
// registers one tile ahead instead of by cp.async; the K scale joins the softmax scale and the
// V scale the final normalization (kernels/ref/attention_ref.h).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct PrefillAttentionParams {
  const void* q;                // [n_tokens, n_heads, head_dim] bf16, row stride ldq (elements)
  int64_t ldq;
  const void* k_cache;          // [num_blocks, block_size, n_kv_heads, head_dim], kv_dtype
  const void* v_cache;          // same layout
  const int32_t* block_tables;  // [n_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  const int32_t* cu_seqlens_q;  // [n_seqs + 1], cu_seqlens_q[0] = 0: query rows of each sequence
  const int32_t* start_pos;     // [n_seqs]: position of each sequence's first query token
  int64_t max_q_len;            // >= every sequence's query count (sizes the grid)
  int64_t n_seqs, n_heads, n_kv_heads, head_dim, block_size;  // head_dim 16, 32, 64 or 128
  int64_t window;               // 0 = unlimited
  float scale;
  void* out;                    // [n_tokens, n_heads, head_dim] row stride ldo, out_dtype (F32/BF16)
  DType out_dtype;
  int64_t ldo;
  DType kv_dtype = DType::BF16;           // BF16 or F8_E4M3
  float k_scale = 1.0f, v_scale = 1.0f;   // F8_E4M3: the layer's dequantization scales
};

cudaError_t prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream);

}  // namespace gale::cuda
