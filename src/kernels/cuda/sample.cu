#include <climits>
#include <cmath>

#include "kernels/cuda/arg_best.cuh"
#include "kernels/cuda/sample.cuh"

namespace gale::cuda {

namespace {

using u64 = unsigned long long;

// One block a row: a row is a few passes over at most a few hundred thousand logits (L2-resident
// after the first), and the cuts below need block-wide scans, not grid-wide ones.
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr float kMassScale = 1099511627776.0f;  // 2^40: a token's mass is exp(x - max) * 2^40

// Order-preserving key of a float: a larger value has a larger key.
__device__ __forceinline__ unsigned key_of(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float value_of(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// A prefix of the candidate order (key descending, id ascending): the tokens with a larger key
// than `key`, and those with that key up to id `id` (ties go to the lower id, as the CPU's sort).
struct Cut {
  unsigned key;
  int id;
};
__device__ __forceinline__ bool inside(const Cut& c, unsigned key, int id) {
  return key > c.key || (key == c.key && id <= c.id);
}

// The values the CPU sampler orders: x = l / temperature (temperature 1 for argmax rows), with
// -0 -> +0 so equal values tie and NaN -> -inf so NaN is never kept over a number.
struct Row {
  const float* l;  // [vocab], penalties applied
  int vocab;
  float temperature;
  float max = 0.0f;  // largest x
  __device__ __forceinline__ float value(int i) const {
    const float x = l[i] / temperature + 0.0f;
    return x == x ? x : -INFINITY;
  }
  __device__ __forceinline__ float weight(float x) const { return expf(x - max); }  // in [0, 1]
  __device__ __forceinline__ u64 mass(float x) const { return __float2ull_rn(weight(x) * kMassScale); }
};

// Radix select digits, from the top of the 32-bit key: a wide first digit (sign, exponent and 3
// mantissa bits) so that logits, which share a few exponents, spread over many bins instead of
// queueing on the atomics of two or three.
constexpr int kDigits = 3;
__host__ __device__ constexpr int digit_bits(int pass) { return pass == 0 ? 12 : 10; }
constexpr int kMaxBins = 1 << 12;
static_assert(digit_bits(0) + digit_bits(1) + digit_bits(2) == 32, "the digits cover the key");
static_assert((1 << digit_bits(1)) % kThreads == 0 && kMaxBins % kThreads == 0, "whole bins per thread");

struct Shared {
  u64 hist[kMaxBins];
  u64 warp[kWarps];
  float warp_v[kWarps];
  int warp_i[kWarps];
  u64 a, b;
  unsigned bin;
  int id;
  float v;
};

// Inclusive prefix sum of v over the block in thread order; `total` gets the block's sum.
// Integer sums: the same inputs give the same result whatever the scheduling.
__device__ u64 block_scan(u64 v, Shared& sh, u64& total) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  if (lane == 31) sh.warp[w] = v;
  __syncthreads();
  if (w == 0) {
    u64 s = sh.warp[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u64 y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    sh.warp[lane] = s;
  }
  __syncthreads();
  const u64 before = w > 0 ? sh.warp[w - 1] : 0;
  total = sh.warp[kWarps - 1];
  __syncthreads();  // sh.warp is reused by the next call
  return v + before;
}

// Largest value of the row and its first id, in every thread.
__device__ void row_argmax(const Row& row, Shared& sh, float& best, int& bi) {
  best = -INFINITY;
  bi = INT_MAX;
  for (int i = threadIdx.x; i < row.vocab; i += kThreads) arg_better(best, bi, row.value(i), i);
  block_arg_best<kThreads>(best, bi, sh.warp_v, sh.warp_i);
  if (threadIdx.x == 0) {
    sh.v = best;
    sh.id = bi;
  }
  __syncthreads();
  best = sh.v;
  bi = sh.id;
  __syncthreads();
}

// Id of the n-th (from 1) token of `in` with key `key`, in id order.
__device__ int nth_tie(const Row& row, const Cut& in, unsigned key, u64 n, Shared& sh) {
  u64 run = 0;
  for (int base = 0; base < row.vocab; base += kThreads) {
    const int i = base + int(threadIdx.x);
    u64 f = 0;
    if (i < row.vocab) {
      const unsigned k = key_of(row.value(i));
      f = k == key && inside(in, k, i);
    }
    u64 total;
    const u64 incl = block_scan(f, sh, total);
    if (f && run + incl == n) sh.id = i;
    run += total;
    if (run >= n) break;  // block-uniform
  }
  __syncthreads();
  const int id = sh.id;
  __syncthreads();
  return id;
}

// The shortest prefix of the tokens of `in` (in candidate order) whose weight reaches the
// target: radix select on the keys, one digit a pass from the top, then the ties at the cut
// key in id order. kMass false: a token weighs 1 and the target is k (top-k). kMass true: a token
// weighs its mass and the target is top_p of the set's mass, known after the first pass (top-p:
// cumulative probability >= top_p, as integers: cum >= ceil(top_p * total)).
template <bool kMass>
__device__ Cut select_cut(const Row& row, const Cut& in, u64 k, float top_p, Shared& sh) {
  unsigned prefix = 0;
  u64 above = 0, at = 0, target = k;
  int shift = 32;
  for (int pass = 0; pass < kDigits; ++pass) {
    const int bits = digit_bits(pass), bins = 1 << bits, per = bins / kThreads;
    shift -= bits;
    for (int b = threadIdx.x; b < bins; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < row.vocab; i += kThreads) {
      const float x = row.value(i);
      const unsigned key = key_of(x);
      if (!inside(in, key, i) || (pass > 0 && (key >> (shift + bits)) != prefix)) continue;
      const u64 w = kMass ? row.mass(x) : 1;
      if (w) atomicAdd(&sh.hist[(key >> shift) & unsigned(bins - 1)], w);
    }
    __syncthreads();
    // Thread t holds bins bins-1-t*per down to bins-(t+1)*per, so the scan in thread order adds
    // the larger keys first.
    const int top = bins - 1 - int(threadIdx.x) * per;
    u64 mine = 0;
    for (int j = 0; j < per; ++j) mine += sh.hist[top - j];
    u64 total;
    const u64 incl = block_scan(mine, sh, total);
    if (kMass && pass == 0) {
      const double t = ceil(double(top_p) * double(total));
      target = t >= double(total) ? total : u64(t);
    }
    u64 acc = above + incl - mine;  // weight of the larger keys
    for (int j = 0; j < per; ++j) {
      const u64 v = sh.hist[top - j];
      if (acc < target && target <= acc + v) {  // exactly one bin of the block crosses
        sh.bin = unsigned(top - j);
        sh.a = acc;
        sh.b = v;
      }
      acc += v;
    }
    __syncthreads();
    prefix = (prefix << bits) | sh.bin;
    above = sh.a;
    at = sh.b;
    __syncthreads();
  }
  // Every token with key `prefix` weighs the same; keep the first `need` of them in id order.
  const u64 one = kMass ? row.mass(value_of(prefix)) : 1;
  const u64 need = (target - above + one - 1) / one;
  if (need * one >= at) return {prefix, INT_MAX};
  return {prefix, nth_tie(row, in, prefix, need, sh)};
}

// Mass of token i if the filters keep it, else 0. min-p: p >= min_p * p(max) is
// exp(x - max) >= min_p (the maximum's weight is 1).
__device__ __forceinline__ u64 kept_mass(const Row& row, int i, const Cut& kc, const Cut& pc, float min_p) {
  const float x = row.value(i);
  const unsigned key = key_of(x);
  if (!inside(kc, key, i) || !inside(pc, key, i)) return 0;
  const float w = row.weight(x);
  return w >= min_p ? __float2ull_rn(w * kMassScale) : 0;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  pdl_launch_dependents();
  pdl_wait();
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const SampleRow s = p.rows[r];
  if (!sample_row_valid(s, p.n_seen_ids, p.n_output_ids) || !sample_mask_valid(s, p.vocab, p.n_mask_words)) {
    if (threadIdx.x == 0) p.out[r] = -1;
    return;
  }
  float* l = p.logits + r * p.ld;
  const int V = int(p.vocab);
  if (s.mask_off >= 0) {  // the grammar's mask first: a masked token is -inf for every filter below
    const uint32_t* m = p.masks + s.mask_off;
    for (int i = threadIdx.x; i < V; i += kThreads)
      if (!((m[i >> 5] >> (i & 31)) & 1u)) l[i] = -INFINITY;
    __syncthreads();
  }
  // Penalties on the raw logits, repetition first (Sampler::sample's order); each list holds
  // distinct ids, so no two threads touch one logit. The _rn intrinsics keep nvcc from fusing
  // presence + frequency * count into an FMA the CPU does not do.
  if (s.repetition_penalty != 1.0f) {
    for (int j = threadIdx.x; j < s.n_seen; j += kThreads) {
      const int id = p.seen_ids[s.seen_off + j];
      if (id < 0 || id >= V) continue;
      const float v = l[id];
      l[id] = v > 0 ? v / s.repetition_penalty : v * s.repetition_penalty;
    }
    __syncthreads();
  }
  if (s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f) {
    for (int j = threadIdx.x; j < s.n_output; j += kThreads) {
      const int id = p.output_ids[s.output_off + j];
      if (id < 0 || id >= V) continue;
      const float c = float(p.output_counts[s.output_off + j]);
      l[id] = __fsub_rn(l[id], __fadd_rn(s.presence_penalty, __fmul_rn(s.frequency_penalty, c)));
    }
    __syncthreads();
  }
  Row row{l, V, s.temperature > 0.0f ? s.temperature : 1.0f};
  float best;
  int bi;
  row_argmax(row, sh, best, bi);
  if (s.temperature == 0.0f || best == -INFINITY) {  // greedy, or nothing to weigh
    if (threadIdx.x == 0) p.out[r] = bi == INT_MAX ? 0 : bi;
    return;
  }
  row.max = best;
  const Cut whole{0u, INT_MAX};  // every key is above 0 (NaN was mapped to -inf)
  Cut kc = whole, pc = whole;
  if (s.top_k > 0 && s.top_k < V) kc = select_cut<false>(row, whole, u64(s.top_k), 1.0f, sh);
  if (s.top_p < 1.0f) pc = select_cut<true>(row, kc, 0, s.top_p, sh);
  u64 local = 0, kept;
  for (int i = threadIdx.x; i < V; i += kThreads) local += kept_mass(row, i, kc, pc, s.min_p);
  block_scan(local, sh, kept);  // >= 2^40: the maximum is always kept
  // The draw: the first kept token (in id order) whose running mass passes u * kept.
  u64 target = u64(floor(s.u * double(kept)));
  if (target >= kept) target = kept - 1;
  u64 run = 0;
  for (int base = 0; base < V; base += kThreads) {
    const int i = base + int(threadIdx.x);
    const u64 m = i < V ? kept_mass(row, i, kc, pc, s.min_p) : 0;
    u64 total;
    const u64 incl = block_scan(m, sh, total);
    if (m && run + incl - m <= target && target < run + incl) sh.id = i;
    run += total;
    if (run > target) break;  // block-uniform
  }
  __syncthreads();
  if (threadIdx.x == 0) p.out[r] = sh.id;
}

}  // namespace

cudaError_t sample(const SampleParams& p, cudaStream_t stream) {
  if (p.n < 0 || p.n > INT32_MAX || p.vocab <= 0 || p.vocab > kSampleMaxVocab || p.ld < p.vocab ||
      p.n_seen_ids < 0 || p.n_output_ids < 0)
    return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  if (!p.logits || !p.rows || !p.out || (p.n_seen_ids > 0 && !p.seen_ids) ||
      (p.n_output_ids > 0 && (!p.output_ids || !p.output_counts)) || p.n_mask_words < 0 ||
      (p.n_mask_words > 0 && !p.masks))
    return cudaErrorInvalidValue;
  return launch(sample_kernel, unsigned(p.n), kThreads, 0, stream, p);
}

}  // namespace gale::cuda
