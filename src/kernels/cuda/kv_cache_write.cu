#include "kernels/cuda/kv_cache_write.cuh"

namespace gale::cuda {

__global__ void kv_cache_write_kernel(KVCacheWriteParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int32_t slot = p.slot_mapping[t];
  if (slot < 0) return;
  for (int64_t i = threadIdx.x; i < p.row; i += blockDim.x) {
    store_f32(p.k_cache, p.cache_dtype, int64_t(slot) * p.row + i, load_f32(p.k, p.src_dtype, t * p.ldk + i));
    store_f32(p.v_cache, p.cache_dtype, int64_t(slot) * p.row + i, load_f32(p.v, p.src_dtype, t * p.ldv + i));
  }
}

cudaError_t kv_cache_write(const KVCacheWriteParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return cudaSuccess;
  for (DType t : {p.src_dtype, p.cache_dtype})
    if (t != DType::F32 && t != DType::BF16) return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(kv_cache_write_kernel, unsigned(p.n_tokens), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
