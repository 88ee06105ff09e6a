// Block-wide (value, index) maximum, the building block of greedy argmax (argmax.cu) and of the
// sampler's temperature-0 rows (sample.cu): the larger value wins, the smaller index on ties
// (torch.argmax's first maximum), and NaN never beats a number.
#pragma once
#include "kernels/cuda/common.cuh"

#ifdef __CUDACC__
#include <climits>

namespace gale::cuda {

__device__ __forceinline__ void arg_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i) || (v != v && ov == ov)) { v = ov; i = oi; }
}

__device__ __forceinline__ void warp_arg_best(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    arg_better(v, i, ov, oi);
  }
}

// Each thread brings its own best (v, i); afterwards every lane of warp 0 holds the block's.
// sv and si: kThreads / 32 shared slots each.
template <int kThreads>
__device__ void block_arg_best(float& v, int& i, float* sv, int* si) {
  warp_arg_best(v, i);
  if (threadIdx.x % 32 == 0) {
    sv[threadIdx.x / 32] = v;
    si[threadIdx.x / 32] = i;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? sv[threadIdx.x] : -INFINITY;
    i = threadIdx.x < kThreads / 32 ? si[threadIdx.x] : INT_MAX;
    warp_arg_best(v, i);
  }
}

}  // namespace gale::cuda
#endif  // __CUDACC__
