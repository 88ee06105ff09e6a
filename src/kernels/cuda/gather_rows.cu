#include "kernels/cuda/gather_rows.cuh"

namespace gale::cuda {

// One block per destination row; a plain copy, so the element type is just its width.
template <typename T>
__global__ void gather_rows_kernel(GatherRowsParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t i = blockIdx.x;
  const T* s = static_cast<const T*>(p.src) + int64_t(p.rows[i]) * p.lds;
  T* d = static_cast<T*>(p.dst) + i * p.ldd;
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) d[c] = s[c];
}

cudaError_t gather_rows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.dtype == DType::F32) GALE_CUDA_TRY(launch(gather_rows_kernel<float>, unsigned(p.n), 256, 0, stream, p));
  else if (p.dtype == DType::BF16) GALE_CUDA_TRY(launch(gather_rows_kernel<uint16_t>, unsigned(p.n), 256, 0, stream, p));
  else return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace gale::cuda
