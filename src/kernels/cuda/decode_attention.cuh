// Paged-attention decode (flash-decoding): one query token per sequence, at position
// seq_lens[s] - 1, attending positions [max(0, pos - window + 1), pos] (window 0 = unlimited)
// read through the sequence's block table. K/V layout of model/kv_cache.h:
// [num_blocks, block_size, n_kv_heads, head_dim] per layer.
//
// Split-K: each sequence's context is cut into partitions of partition_size tokens; one block
// handles (partition, kv head, up to 8 query heads of its group, sequence), so K/V are read once
// per group (GQA). When a sequence needs more than one partition the partial results (running
// max, sum, unnormalized output) go to the workspace and a second kernel merges them.
//
// An F8_E4M3 cache is widened in registers (kv_fp8.cuh); its K scale joins the softmax scale
// and its V scale multiplies the output (kernels/ref/attention_ref.h).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct DecodeAttentionParams {
  const void* q;               // [n_seqs, n_heads, head_dim] row stride ldq, q_dtype (F32/BF16)
  DType q_dtype;
  int64_t ldq;
  const void* k_cache;         // [num_blocks, block_size, n_kv_heads, head_dim], kv_dtype
  const void* v_cache;         // same layout
  DType kv_dtype;              // F32, BF16 or F8_E4M3
  const int32_t* block_tables; // [n_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  const int32_t* seq_lens;     // [n_seqs], each >= 1: cached tokens including the new one
  int64_t max_seq_len;         // >= every seq_lens[s] (sizes the split and the workspace)
  int64_t n_seqs, n_heads, n_kv_heads, head_dim, block_size;  // head_dim 16, 32, 64, 128 or 256
  int64_t window;              // 0 = unlimited
  float scale;                 // softmax scale, usually 1/sqrt(head_dim)
  void* out;                   // [n_seqs, n_heads, head_dim] row stride ldo, out_dtype (F32/BF16)
  DType out_dtype;
  int64_t ldo;
  void* workspace;             // decode_attention_workspace_size(p) bytes (nullptr when 0)
  int64_t partition_size;      // 0 = chosen from the shape and the SM count; else 64..512, power of 2
  float k_scale = 1.0f, v_scale = 1.0f;  // F8_E4M3: the layer's dequantization scales (ignored otherwise)
};

// Bytes of workspace decode_attention needs for these shapes (pointers are not read).
size_t decode_attention_workspace_size(const DecodeAttentionParams& p);

cudaError_t decode_attention(const DecodeAttentionParams& p, cudaStream_t stream);

}  // namespace gale::cuda
