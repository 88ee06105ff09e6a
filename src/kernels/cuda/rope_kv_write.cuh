// RoPE and the paged K/V write in one kernel: exactly rope_apply on q and k followed by
// kv_cache_write of the rotated k and of v (same rounding), in one launch instead of two. The
// decode path runs it once per layer.
#pragma once
#include "kernels/cuda/kv_cache_write.cuh"
#include "kernels/cuda/rope.cuh"

namespace gale::cuda {

struct RopeKVWriteParams {
  RopeParams rope;        // q and k (k required), rotated in place
  KVCacheWriteParams kv;  // kv.k must be rope.k with the same stride and dtype
};

cudaError_t rope_kv_write(const RopeKVWriteParams& p, cudaStream_t stream);

}  // namespace gale::cuda
