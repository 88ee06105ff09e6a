#include "kernels/cuda/embedding.cuh"

namespace gale::cuda {

// One block per token; threads stride over the row (the gather is pure bandwidth).
__global__ void embedding_kernel(EmbeddingParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int32_t id = p.ids[t];
  const bool ok = id >= 0 && id < p.vocab;
  for (int64_t i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    float v = ok ? load_f32(p.table, p.table_dtype, int64_t(id) * p.hidden + i) : __int_as_float(0x7fc00000);
    store_f32(p.out, p.out_dtype, t * p.ld_out + i, v);
  }
}

cudaError_t embedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0) return cudaSuccess;
  if (p.out_dtype != DType::F32 && p.out_dtype != DType::BF16) return cudaErrorInvalidValue;
  if (p.table_dtype != DType::F32 && p.table_dtype != DType::F16 && p.table_dtype != DType::BF16)
    return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(embedding_kernel, unsigned(p.n_tokens), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
