// Scatters new K/V rows into the paged cache (layout of model/kv_cache.h:
// [num_blocks, block_size, n_kv_heads, head_dim] per layer). The host turns block tables into
// one slot per token (slot = block_id * block_size + offset), once per step for all layers.
// An F8_E4M3 cache gets x / scale rounded to E4M3 (kernels/ref/attention_ref.h, kv_fp8.cuh).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct KVCacheWriteParams {
  const void* k;             // [n_tokens, n_kv_heads * head_dim] row stride ldk, src_dtype
  int64_t ldk;
  const void* v;             // same, row stride ldv
  int64_t ldv;
  DType src_dtype;           // F32 or BF16
  void* k_cache;             // [num_blocks * block_size, n_kv_heads * head_dim], cache_dtype
  void* v_cache;
  DType cache_dtype;         // F32, BF16 or F8_E4M3
  const int32_t* slot_mapping;  // [n_tokens]; a negative slot skips the token (padding)
  int64_t n_tokens, row;     // row = n_kv_heads * head_dim
  float k_scale = 1.0f, v_scale = 1.0f;  // F8_E4M3: the layer's dequantization scales
};

cudaError_t kv_cache_write(const KVCacheWriteParams& p, cudaStream_t stream);

}  // namespace gale::cuda
