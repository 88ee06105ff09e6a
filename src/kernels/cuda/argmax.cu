#include "kernels/cuda/argmax.cuh"

namespace gale::cuda {

// (value, index) pairs: a beats b when larger, or equal with a smaller index.
__device__ __forceinline__ void arg_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i) || (v != v && ov == ov)) { v = ov; i = oi; }
}

constexpr int kArgmaxThreads = 1024;

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(ArgmaxParams p) {
  const int64_t r = blockIdx.x;
  float best = -INFINITY;
  int bi = INT_MAX;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kArgmaxThreads)
    arg_better(best, bi, load_f32(p.logits, p.dtype, r * p.ld + i), int(i));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    arg_better(best, bi, ov, oi);
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  if (threadIdx.x % 32 == 0) { sv[threadIdx.x / 32] = best; si[threadIdx.x / 32] = bi; }
  __syncthreads();
  if (threadIdx.x < 32) {
    best = sv[threadIdx.x];
    bi = si[threadIdx.x];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      arg_better(best, bi, ov, oi);
    }
    if (threadIdx.x == 0) p.out[r] = bi == INT_MAX ? 0 : bi;
  }
}

cudaError_t argmax(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if ((p.dtype != DType::F32 && p.dtype != DType::BF16) || p.vocab <= 0 || p.vocab > INT32_MAX)
    return cudaErrorInvalidValue;
  argmax_kernel<<<unsigned(p.n), kArgmaxThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace gale::cuda
