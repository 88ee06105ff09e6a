#include "kernels/cuda/silu_mul.cuh"

namespace gale::cuda {

// Grid: (column blocks, rows). expf (not __expf) keeps it within a few ulps of the CPU kernel.
__global__ void silu_mul_kernel(SiluMulParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.y;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.d; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = load_f32(p.gate, p.in_dtype, r * p.ldg + i);
    const float u = load_f32(p.up, p.in_dtype, r * p.ldu + i);
    store_f32(p.out, p.out_dtype, r * p.ldo + i, g / (1.0f + expf(-g)) * u);
  }
}

cudaError_t silu_mul(const SiluMulParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.d <= 0) return cudaSuccess;
  for (DType t : {p.in_dtype, p.out_dtype})
    if (t != DType::F32 && t != DType::BF16) return cudaErrorInvalidValue;
  if (p.n > 65535) return cudaErrorInvalidValue;
  const unsigned bx = unsigned(std::min<int64_t>((p.d + 255) / 256, 64));
  GALE_CUDA_TRY(launch(silu_mul_kernel, dim3(bx, unsigned(p.n)), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
