#include "kernels/cuda/rmsnorm_residual.cuh"

namespace gale::cuda {

// One block per row. Pass 1 adds and sums squares (the updated row is written back), pass 2
// re-reads the row (from L1/L2: a row is at most a few tens of KB) and scales it.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) rmsnorm_residual_kernel(RMSNormParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.x;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.d; i += THREADS) {
    float v = load_f32(p.residual, p.residual_dtype, r * p.ldr + i);
    if (p.x) {
      v += load_f32(p.x, p.x_dtype, r * p.ldx + i);
      store_f32(p.residual, p.residual_dtype, r * p.ldr + i, v);
      v = load_f32(p.residual, p.residual_dtype, r * p.ldr + i);  // the stored (maybe rounded) value
    }
    ss += v * v;
  }
  __shared__ float part[THREADS / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float tot = 0.0f;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) tot += part[w];
  const float inv = rsqrtf(tot / float(p.d) + p.eps);
  for (int64_t i = threadIdx.x; i < p.d; i += THREADS) {
    float v = load_f32(p.residual, p.residual_dtype, r * p.ldr + i);
    store_f32(p.out, p.out_dtype, r * p.ldo + i, p.weight[i] * (v * inv));
  }
}

cudaError_t rmsnorm_residual(const RMSNormParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  for (DType t : {p.residual_dtype, p.out_dtype, p.x ? p.x_dtype : DType::F32})
    if (t != DType::F32 && t != DType::BF16) return cudaErrorInvalidValue;
  if (p.d <= 256) GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<64>, unsigned(p.n), 64, 0, stream, p));
  else if (p.d <= 2048) GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<256>, unsigned(p.n), 256, 0, stream, p));
  else GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<1024>, unsigned(p.n), 1024, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
