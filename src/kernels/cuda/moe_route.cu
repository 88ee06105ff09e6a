#include <algorithm>
#include <climits>

#include "kernels/cuda/moe_route.cuh"

namespace gale::cuda {

namespace {

constexpr int kPerLane = int(kMoeMaxExperts / 32);  // router values a lane holds
constexpr int kTopkWarps = 8;                       // tokens per top-k block
constexpr int kPermThreads = 1024;                  // the permutation block
constexpr int kPermWarps = kPermThreads / 32;

// (value, expert) order of the top-k: larger value first, then the lower expert.
__device__ __forceinline__ bool better(float v, int e, float bv, int be) { return v > bv || (v == bv && e < be); }

// One warp per token; lane l holds experts l, l + 32, ...
__global__ void __launch_bounds__(kTopkWarps * 32) moe_topk_kernel(MoeRouteParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kTopkWarps + (threadIdx.x >> 5);
  if (t >= p.T) return;
  const int E = int(p.E), K = int(p.K);
  const float* row = p.logits + t * p.ldl;
  float v[kPerLane];
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    float l = e < E ? row[e] : -INFINITY;
    if (l != l) l = -INFINITY;  // NaN never wins a slot
    v[j] = l;
    m = fmaxf(m, l);
  }
  m = warp_max(m);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    v[j] = lane + 32 * j < E ? expf(v[j] - m) : 0.0f;
    sum += v[j];
  }
  sum = warp_sum(sum);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) v[j] /= sum;  // the host's r[e] / sum (not a reciprocal)
  unsigned taken = 0;                                // bit j: expert lane + 32 j chosen
  int ids[kMoeMaxTopK];
  float ws[kMoeMaxTopK];
  float topsum = 0.0f;
  for (int k = 0; k < K; ++k) {
    float bv = -INFINITY;
    int be = INT_MAX;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < E && !(taken >> j & 1u) && better(v[j], e, bv, be)) {
        bv = v[j];
        be = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (better(ov, oe, bv, be)) {
        bv = ov;
        be = oe;
      }
    }
    if ((be & 31) == lane) taken |= 1u << (be >> 5);
    ids[k] = be;
    ws[k] = bv;
    topsum += bv;  // in k order, as the host
  }
  if (lane < K) {
    float w = 0.0f;
    int id = 0;
#pragma unroll
    for (int k = 0; k < kMoeMaxTopK; ++k)
      if (k == lane) {
        w = ws[k];
        id = ids[k];
      }
    p.topk_ids[t * K + lane] = id;
    p.topk_w[t * K + lane] = p.renormalize ? w / topsum : w;
  }
}

// One block of kPermThreads: counts (shared atomics: the totals do not depend on the order),
// offsets (a warp scan), then the slots in chunks of kPermThreads in (token, k) order: within
// a chunk a slot's rank among the earlier slots of its expert is its rank inside its warp
// (__match_any_sync) plus the counts of the earlier warps (a scan over the warps per expert).
__global__ void __launch_bounds__(kPermThreads) moe_permute_kernel(MoeRouteParams p) {
  __shared__ int base[kMoeMaxExperts];                  // counts, then the next free row of each expert
  __shared__ int warp_cnt[kPermWarps][kMoeMaxExperts];  // per chunk: slots of expert e in warp w, then their prefix
  pdl_launch_dependents();
  pdl_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int E = int(p.E), R = int(p.T * p.K);
  for (int e = tid; e < E; e += kPermThreads) base[e] = 0;
  for (int i = tid; i < kPermWarps * kMoeMaxExperts; i += kPermThreads) (&warp_cnt[0][0])[i] = 0;
  __syncthreads();
  for (int i = tid; i < R; i += kPermThreads) atomicAdd(&base[p.topk_ids[i]], 1);
  __syncthreads();
  if (warp == 0) {  // exclusive scan of the counts
    int run = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const int c = e < E ? base[e] : 0;
      int inc = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += u;
      }
      if (e < E) {
        base[e] = run + inc - c;
        p.offsets[e] = run + inc - c;
      }
      run += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) p.offsets[E] = run;
  }
  __syncthreads();
  const unsigned lt = (1u << lane) - 1u;
  for (int c0 = 0; c0 < R; c0 += kPermThreads) {
    const int i = c0 + tid;
    const int id = i < R ? p.topk_ids[i] : -1;
    const unsigned same = __match_any_sync(0xffffffffu, id);
    const int rank = __popc(same & lt);
    if (id >= 0 && rank == 0) warp_cnt[warp][id] = __popc(same);
    __syncthreads();
    for (int e = tid; e < E; e += kPermThreads) {  // per expert: prefix over the warps, in order
      int run = base[e];
      for (int w = 0; w < kPermWarps; ++w) {
        const int c = warp_cnt[w][e];
        warp_cnt[w][e] = run;
        run += c;
      }
      base[e] = run;
    }
    __syncthreads();
    if (id >= 0) {
      const int pos = warp_cnt[warp][id] + rank;
      p.slot_of[i] = pos;
      p.perm_rows[pos] = i / int(p.K);
    }
    __syncthreads();
    for (int j = tid; j < kPermWarps * E; j += kPermThreads) warp_cnt[j / E][j % E] = 0;
    __syncthreads();
  }
}

// Grid: (column blocks, token blocks); a thread adds its columns of one token at a time.
__global__ void moe_combine_kernel(MoeCombineParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int K = int(p.K);
  for (int64_t t = blockIdx.y; t < p.T; t += gridDim.y) {
    int e_of[kMoeMaxTopK], order[kMoeMaxTopK];
    for (int k = 0; k < K; ++k) e_of[k] = p.topk_ids[t * K + k];
    // Ascending expert order (K <= 8: a selection), the order of the per-expert scatter-adds.
    for (int k = 0; k < K; ++k) {
      int best = -1;
      for (int j = 0; j < K; ++j) {
        bool used = false;
        for (int q = 0; q < k; ++q) used |= order[q] == j;
        if (!used && (best < 0 || e_of[j] < e_of[best])) best = j;
      }
      order[k] = best;
    }
    int64_t src[kMoeMaxTopK];
    float w[kMoeMaxTopK];
    for (int k = 0; k < K; ++k) {
      src[k] = int64_t(p.slot_of[t * K + order[k]]) * p.ldy;
      w[k] = p.topk_w[t * K + order[k]];
    }
    float* x = p.x + t * p.ldx;
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < p.cols; c += int64_t(gridDim.x) * blockDim.x) {
      float acc = x[c];
      for (int k = 0; k < K; ++k) acc = fmaf(w[k], load_f32(p.y, p.y_dtype, src[k] + c), acc);
      x[c] = acc;
    }
  }
}

}  // namespace

cudaError_t moe_route(const MoeRouteParams& p, cudaStream_t stream) {
  if (p.T <= 0) return cudaSuccess;
  if (p.E < 1 || p.E > kMoeMaxExperts || p.K < 1 || p.K > kMoeMaxTopK || p.K > p.E || p.T * p.K > INT_MAX / 2)
    return cudaErrorInvalidValue;
  GALE_CUDA_TRY(launch(moe_topk_kernel, unsigned((p.T + kTopkWarps - 1) / kTopkWarps), kTopkWarps * 32, 0, stream, p));
  GALE_CUDA_TRY(launch(moe_permute_kernel, 1, kPermThreads, 0, stream, p));
  return cudaGetLastError();
}

cudaError_t moe_combine(const MoeCombineParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.cols <= 0) return cudaSuccess;
  if (p.K < 1 || p.K > kMoeMaxTopK || (p.y_dtype != DType::BF16 && p.y_dtype != DType::F32))
    return cudaErrorInvalidValue;
  const unsigned bx = unsigned(std::min<int64_t>((p.cols + 255) / 256, 16));
  GALE_CUDA_TRY(launch(moe_combine_kernel, dim3(bx, unsigned(std::min<int64_t>(p.T, 65535))), 256, 0, stream, p));
  return cudaGetLastError();
}

}  // namespace gale::cuda
