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

// No residual add, d a multiple of 8 up to 256 * 8 * V: each of 256 threads keeps V groups of
// 8 values in registers (one read of the row, 16-byte loads, one 16-byte bf16 store per group).
template <typename R, int V>
__global__ void __launch_bounds__(256) rmsnorm_vec_kernel(RMSNormParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.x;
  const R* row = static_cast<const R*>(p.residual) + r * p.ldr;
  float v[V][8];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t c = (int64_t(j) * 256 + threadIdx.x) * 8;
    if (c < p.d) {
      load8(row + c, v[j]);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += v[j][e] * v[j][e];
    }
  }
  __shared__ float part[8];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float tot = 0.0f;
#pragma unroll
  for (int w = 0; w < 8; ++w) tot += part[w];
  const float inv = rsqrtf(tot / float(p.d) + p.eps);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t c = (int64_t(j) * 256 + threadIdx.x) * 8;
    if (c < p.d) {
      float w[8];
      load8(p.weight + c, w);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[j][e] = w[e] * (v[j][e] * inv);
      store8(static_cast<__nv_bfloat16*>(p.out) + r * p.ldo + c, v[j]);
    }
  }
}

cudaError_t rmsnorm_residual(const RMSNormParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  for (DType t : {p.residual_dtype, p.out_dtype, p.x ? p.x_dtype : DType::F32})
    if (t != DType::F32 && t != DType::BF16) return cudaErrorInvalidValue;
  const auto a16 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  if (!p.x && p.out_dtype == DType::BF16 && p.d % 8 == 0 && p.d <= 8192 && p.ldr % 8 == 0 && p.ldo % 8 == 0 &&
      a16(p.residual) && a16(p.out) && a16(p.weight) && p.d > 256) {
    const bool f32 = p.residual_dtype == DType::F32;
    const int groups = int((p.d / 8 + 255) / 256);
    const dim3 grid(unsigned(p.n));
    if (groups == 1) return f32 ? launch(rmsnorm_vec_kernel<float, 1>, grid, 256, 0, stream, p)
                                : launch(rmsnorm_vec_kernel<__nv_bfloat16, 1>, grid, 256, 0, stream, p);
    if (groups == 2) return f32 ? launch(rmsnorm_vec_kernel<float, 2>, grid, 256, 0, stream, p)
                                : launch(rmsnorm_vec_kernel<__nv_bfloat16, 2>, grid, 256, 0, stream, p);
    return f32 ? launch(rmsnorm_vec_kernel<float, 4>, grid, 256, 0, stream, p)
               : launch(rmsnorm_vec_kernel<__nv_bfloat16, 4>, grid, 256, 0, stream, p);
  }
  if (p.d <= 256) GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<64>, unsigned(p.n), 64, 0, stream, p));
  else if (p.d <= 2048) GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<256>, unsigned(p.n), 256, 0, stream, p));
  else GALE_CUDA_TRY(launch(rmsnorm_residual_kernel<1024>, unsigned(p.n), 1024, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
