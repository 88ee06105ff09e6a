#include "kernels/cuda/bias_add.cuh"

namespace gale::cuda {

__global__ void bias_add_kernel(BiasAddParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.x;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
    store_f32(p.y, p.dtype, r * p.ldy + c, load_f32(p.y, p.dtype, r * p.ldy + c) + p.bias[c]);
}

cudaError_t bias_add(const BiasAddParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.dtype != DType::F32 && p.dtype != DType::BF16) return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(bias_add_kernel, unsigned(p.n), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
