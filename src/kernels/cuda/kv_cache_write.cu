#include "kernels/cuda/kv_cache_write.cuh"

#include "kernels/cuda/kv_fp8.cuh"

namespace gale::cuda {

__global__ void kv_cache_write_kernel(KVCacheWriteParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int32_t slot = p.slot_mapping[t];
  if (slot < 0) return;
  for (int64_t i = threadIdx.x; i < p.row; i += blockDim.x) {
    store_kv(p.k_cache, p.cache_dtype, int64_t(slot) * p.row + i, load_f32(p.k, p.src_dtype, t * p.ldk + i), p.k_scale);
    store_kv(p.v_cache, p.cache_dtype, int64_t(slot) * p.row + i, load_f32(p.v, p.src_dtype, t * p.ldv + i), p.v_scale);
  }
}

cudaError_t kv_cache_write(const KVCacheWriteParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return cudaSuccess;
  if ((p.src_dtype != DType::F32 && p.src_dtype != DType::BF16) ||
      (p.cache_dtype != DType::F32 && p.cache_dtype != DType::BF16 && p.cache_dtype != DType::F8_E4M3) ||
      (p.cache_dtype == DType::F8_E4M3 && !(p.k_scale > 0.0f && p.v_scale > 0.0f)))
    return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(kv_cache_write_kernel, unsigned(p.n_tokens), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
