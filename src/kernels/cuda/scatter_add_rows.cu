#include "kernels/cuda/scatter_add_rows.cuh"

namespace gale::cuda {

__global__ void scatter_add_rows_kernel(ScatterAddRowsParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t i = blockIdx.x;
  const float w = p.weight[i];
  float* d = p.dst + int64_t(p.rows[i]) * p.ldd;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x)
    d[c] = fmaf(w, load_f32(p.src, p.src_dtype, i * p.lds + c), d[c]);
}

cudaError_t scatter_add_rows(const ScatterAddRowsParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.src_dtype != DType::F32 && p.src_dtype != DType::BF16) return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(scatter_add_rows_kernel, unsigned(p.n), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
