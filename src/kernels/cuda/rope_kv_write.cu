#include "kernels/cuda/rope_kv_write.cuh"

#include "kernels/cuda/kv_fp8.cuh"

#include <algorithm>

namespace gale::cuda {

// Grid (token, head group): a thread row per q head rotates it in place; one per kv head rotates its
// k in place and copies it (as stored, so rounded as kv_cache_write would see it) into the
// cache together with its v. Padding tokens (slot < 0) are rotated but not cached. Heads are
// spread over blocks, not one block per token: at batch 1 the step has one token, and a lone
// block would do all heads one after another.
__global__ void rope_kv_write_kernel(RopeKVWriteParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const RopeParams& r = p.rope;
  const KVCacheWriteParams& w = p.kv;
  const int64_t t = blockIdx.x;
  const int64_t half = r.rot_dim / 2, hd = r.head_dim;
  const float* c = r.cos + t * half;
  const float* s = r.sin + t * half;
  // blockDim.y heads per block, blockDim.x threads per head.
  const int64_t hh = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
  if (hh >= r.n_q_heads + r.n_k_heads) return;
  const bool is_q = hh < r.n_q_heads;
  const int64_t h = is_q ? hh : hh - r.n_q_heads;
  void* base = is_q ? r.q : r.k;
  const int64_t off = t * (is_q ? r.ldq : r.ldk) + h * hd;
  const int32_t slot = is_q ? -1 : w.slot_mapping[t];
  const int64_t dst = int64_t(slot) * w.row + h * hd;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = load_f32(base, r.dtype, off + i), b = load_f32(base, r.dtype, off + i + half);
    const float2 x = rope_rotate(a, b, c[i], s[i]);
    store_f32(base, r.dtype, off + i, x.x);
    store_f32(base, r.dtype, off + i + half, x.y);
    if (slot >= 0) {
      store_kv(w.k_cache, w.cache_dtype, dst + i, load_f32(base, r.dtype, off + i), w.k_scale);
      store_kv(w.k_cache, w.cache_dtype, dst + i + half, load_f32(base, r.dtype, off + i + half), w.k_scale);
    }
  }
  if (slot < 0) return;
  for (int64_t i = r.rot_dim + threadIdx.x; i < hd; i += blockDim.x)  // k dims past the rotary ones
    store_kv(w.k_cache, w.cache_dtype, dst + i, load_f32(w.k, w.src_dtype, off + i), w.k_scale);
  const int64_t voff = t * w.ldv + h * hd;
  for (int64_t i = threadIdx.x; i < hd; i += blockDim.x)
    store_kv(w.v_cache, w.cache_dtype, dst + i, load_f32(w.v, w.src_dtype, voff + i), w.v_scale);
}

cudaError_t rope_kv_write(const RopeKVWriteParams& p, cudaStream_t stream) {
  const RopeParams& r = p.rope;
  const KVCacheWriteParams& w = p.kv;
  if (r.n_tokens <= 0) return cudaSuccess;
  if ((r.dtype != DType::F32 && r.dtype != DType::BF16) || r.rot_dim % 2 || r.rot_dim <= 0 || r.rot_dim > r.head_dim ||
      !r.k || w.k != r.k || w.ldk != r.ldk || w.src_dtype != r.dtype || w.n_tokens != r.n_tokens ||
      w.row != r.n_k_heads * r.head_dim ||
      (w.cache_dtype != DType::F32 && w.cache_dtype != DType::BF16 && w.cache_dtype != DType::F8_E4M3) ||
      (w.cache_dtype == DType::F8_E4M3 && !(w.k_scale > 0.0f && w.v_scale > 0.0f)))
    return cudaErrorInvalidValue;
  // A head per blockDim.x threads (one rotation pair each), 256 threads per block: at batch 1
  // the heads spread over several blocks; in prefill the blocks stay big enough to schedule.
  const int64_t heads = r.n_q_heads + r.n_k_heads;
  const unsigned tx = unsigned(std::min<int64_t>(128, std::max<int64_t>(32, (r.head_dim / 2 + 31) / 32 * 32)));
  const unsigned ty = 256 / tx;
  if ((heads + ty - 1) / ty > 65535) return cudaErrorInvalidValue;
  return launch(rope_kv_write_kernel, dim3(unsigned(r.n_tokens), unsigned((heads + ty - 1) / ty)), dim3(tx, ty), 0, stream, p);
}

}  // namespace gale::cuda
