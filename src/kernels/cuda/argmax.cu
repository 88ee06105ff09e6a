#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/arg_best.cuh"

namespace gale::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kPerBlock = 4096;  // logits per block when a row is split

// Best (value, index) of logits [i0, i1) of row r over the block; valid in thread 0.
__device__ void block_argmax(const ArgmaxParams& p, int64_t r, int64_t i0, int64_t i1, float& best, int& bi) {
  best = -INFINITY;
  bi = INT_MAX;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) arg_better(best, bi, load_f32(p.logits, p.dtype, r * p.ld + i), int(i));
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  block_arg_best<kThreads>(best, bi, sv, si);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(ArgmaxParams p) {
  pdl_launch_dependents();
  pdl_wait();
  float best;
  int bi;
  block_argmax(p, blockIdx.x, 0, p.vocab, best, bi);
  if (threadIdx.x == 0) p.out[blockIdx.x] = bi == INT_MAX ? 0 : bi;
}

// Row blockIdx.y split over gridDim.x blocks. Each block folds its best into one 64-bit key
// per row (order-preserving value bits above, ~index below, so atomicMax keeps the largest
// value and, on ties, the smallest index); the last block to finish writes the index and
// zeroes the key and the counter for the next call.
__global__ void __launch_bounds__(kThreads) argmax_split_kernel(ArgmaxParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.y;
  const int64_t i0 = int64_t(blockIdx.x) * kPerBlock;
  float best;
  int bi;
  block_argmax(p, r, i0, min(p.vocab, i0 + kPerBlock), best, bi);
  if (threadIdx.x != 0) return;
  auto* keys = static_cast<unsigned long long*>(p.workspace);
  auto* done = reinterpret_cast<unsigned*>(keys + p.n);
  if (bi != INT_MAX) {  // a block of NaNs has nothing to offer
    const unsigned u = __float_as_uint(best + 0.0f);  // -0 -> +0: equal values tie on the index
    const unsigned ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    atomicMax(keys + r, (static_cast<unsigned long long>(ord) << 32) | (0xFFFFFFFFu - unsigned(bi)));
  }
  __threadfence();
  if (atomicAdd(done + r, 1u) != gridDim.x - 1) return;
  __threadfence();
  const unsigned long long k = atomicExch(keys + r, 0ull);
  atomicExch(done + r, 0u);
  p.out[r] = k == 0 ? 0 : int32_t(0xFFFFFFFFu - unsigned(k & 0xFFFFFFFFull));
}

}  // namespace

size_t argmax_workspace_size(int64_t n) { return size_t(n > 0 ? n : 0) * 12; }

cudaError_t argmax(const ArgmaxParams& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if ((p.dtype != DType::F32 && p.dtype != DType::BF16) || p.vocab <= 0 || p.vocab > INT32_MAX - 1)
    return cudaErrorInvalidValue;
  const int64_t splits = (p.vocab + kPerBlock - 1) / kPerBlock;
  if (!p.workspace || splits == 1) return launch(argmax_kernel, unsigned(p.n), kThreads, 0, stream, p);
  if (p.n > 65535) return cudaErrorInvalidValue;
  return launch(argmax_split_kernel, dim3(unsigned(splits), unsigned(p.n)), kThreads, 0, stream, p);
}

}  // namespace gale::cuda
