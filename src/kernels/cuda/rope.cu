#include "kernels/cuda/rope.cuh"

namespace gale::cuda {

// One block per token; each thread rotates pairs (head, i) of q then k.
__global__ void rope_kernel(RopeParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int64_t half = p.rot_dim / 2;
  const float* c = p.cos + t * half;
  const float* s = p.sin + t * half;
  const int64_t nq = p.n_q_heads * half;
  const int64_t nk = p.k ? p.n_k_heads * half : 0;
  for (int64_t j = threadIdx.x; j < nq + nk; j += blockDim.x) {
    const bool is_q = j < nq;
    const int64_t jj = is_q ? j : j - nq;
    const int64_t h = jj / half, i = jj % half;
    void* base = is_q ? p.q : p.k;
    const int64_t off = t * (is_q ? p.ldq : p.ldk) + h * p.head_dim + i;
    const float a = load_f32(base, p.dtype, off), b = load_f32(base, p.dtype, off + half);
    const float2 r = rope_rotate(a, b, c[i], s[i]);
    store_f32(base, p.dtype, off, r.x);
    store_f32(base, p.dtype, off + half, r.y);
  }
}

cudaError_t rope_apply(const RopeParams& p, cudaStream_t stream) {
  if (p.n_tokens <= 0 || p.rot_dim <= 0) return cudaSuccess;
  if ((p.dtype != DType::F32 && p.dtype != DType::BF16) || p.rot_dim % 2 || p.rot_dim > p.head_dim)
    return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(rope_kernel, unsigned(p.n_tokens), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
