#include "kernels/cuda/head_rmsnorm.cuh"

namespace gale::cuda {

// One warp per (token, head): head_dim is at most a few hundred elements.
__global__ void head_rmsnorm_kernel(HeadRMSNormParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= p.n_tokens * p.n_heads) return;
  const int64_t base = (w / p.n_heads) * p.ld + (w % p.n_heads) * p.head_dim;
  float ss = 0.0f;
  for (int64_t i = lane; i < p.head_dim; i += 32) {
    const float v = load_f32(p.x, p.dtype, base + i);
    ss += v * v;
  }
  const float inv = rsqrtf(warp_sum(ss) / float(p.head_dim) + p.eps);
  for (int64_t i = lane; i < p.head_dim; i += 32)
    store_f32(p.x, p.dtype, base + i, p.weight[i] * (load_f32(p.x, p.dtype, base + i) * inv));
}

cudaError_t head_rmsnorm(const HeadRMSNormParams& p, cudaStream_t stream) {
  const int64_t warps = p.n_tokens * p.n_heads;
  if (warps <= 0) return cudaSuccess;
  if (p.dtype != DType::F32 && p.dtype != DType::BF16) return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(head_rmsnorm_kernel, unsigned((warps + 7) / 8), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
