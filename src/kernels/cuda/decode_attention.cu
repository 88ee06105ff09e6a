#include "kernels/cuda/decode_attention.cuh"

#include <algorithm>

#include <cooperative_groups.h>

#include "kernels/cuda/kv_fp8.cuh"

namespace gale::cuda {

namespace {

constexpr int kWarps = 4;

// 8 consecutive K/V elements as loaded (16 bytes of bf16, 32 of f32), widened only at use so
// that more rows fit in registers while their loads are in flight.
template <typename KV> struct Raw8;
template <> struct Raw8<__nv_bfloat16> {
  uint4 u;
  __device__ __forceinline__ void load(const __nv_bfloat16* p) { u = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void widen(float* o) const { load8(reinterpret_cast<const __nv_bfloat16*>(&u), o); }
};
template <> struct Raw8<__nv_fp8_e4m3> {
  uint2 u;
  __device__ __forceinline__ void load(const __nv_fp8_e4m3* p) { u = *reinterpret_cast<const uint2*>(p); }
  __device__ __forceinline__ void widen(float* o) const { widen8_e4m3(u, o); }
};
template <> struct Raw8<float> {
  float4 a, b;
  __device__ __forceinline__ void load(const float* p) {
    a = reinterpret_cast<const float4*>(p)[0];
    b = reinterpret_cast<const float4*>(p)[1];
  }
  __device__ __forceinline__ void widen(float* o) const {
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
  }
};

// Cache slot of position t: a shift when block_size is a power of two (the usual 16/32),
// 32-bit division otherwise (64-bit division costs ~70 instructions per row).
__device__ __forceinline__ int64_t slot_of(const int32_t* table, int t, int bs, int shift) {
  const int b = shift >= 0 ? t >> shift : t / bs;
  return int64_t(table[b]) * bs + (t - b * bs);
}

struct Split {
  int64_t part;       // tokens per partition
  int64_t max_parts;  // partitions of the longest sequence
  int tile_heads, head_tiles;
};

int64_t effective_len(const DecodeAttentionParams& p) {
  return p.window > 0 ? std::min(p.max_seq_len, p.window) : p.max_seq_len;
}

Split choose_split(const DecodeAttentionParams& p) {
  Split s;
  const int64_t group = p.n_heads / p.n_kv_heads;
  s.tile_heads = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
  s.head_tiles = int((group + s.tile_heads - 1) / s.tile_heads);
  const int64_t len = std::max<int64_t>(1, effective_len(p));
  if (p.partition_size > 0) {
    s.part = p.partition_size;
  } else {
    // Largest partition that still gives every SM two blocks; longer partitions mean less
    // merging work, shorter ones more parallelism for small batches.
    const int64_t blocks_per_part = p.n_seqs * p.n_kv_heads * s.head_tiles;
    const int64_t want = 2 * int64_t(device_sm_count());
    s.part = 64;
    for (int64_t cand : {512, 256, 128}) {
      if (blocks_per_part * ((len + cand - 1) / cand) >= want) { s.part = cand; break; }
    }
  }
  s.max_parts = (len + s.part - 1) / s.part;
  return s;
}

// kCluster: the partitions of a (sequence, head tile) are the blocks of one thread block cluster
// (grid.x = max_parts <= 8) and merge through each other's shared memory, without the workspace
// and the second kernel; a block past its sequence's end takes part with an empty partition.
template <typename KV, int HD, int TH, bool kCluster>
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(DecodeAttentionParams p, int part_size,
                                                                       int max_parts, int head_tiles) {
  pdl_launch_dependents();
  pdl_wait();
  constexpr int LPT = HD / 8;           // lanes per token: each lane owns 8 consecutive dims
  constexpr int TPW = 32 / LPT;         // tokens per warp per step
  constexpr int STEP = kWarps * TPW;    // tokens per block per step
  constexpr int kUnroll = sizeof(KV) <= 2 ? 8 : 4;  // rows in flight per lane before the first use
  // E4M3: the K scale is in q (the launcher folds it into p.scale), the V scale multiplies the
  // normalized output.
  constexpr bool kFp8 = sizeof(KV) == 1;
  extern __shared__ float smem[];       // scores [TH][part_size], later reused for the reduction
  __shared__ float s_max[TH], s_sum[TH];

  const int s = blockIdx.z;
  const int kvh = blockIdx.y / head_tiles;
  const int tile = blockIdx.y % head_tiles;
  const int group = int(p.n_heads / p.n_kv_heads);
  const int h0 = kvh * group + tile * TH;
  const int nh = min(TH, group - tile * TH);

  const int64_t len = p.seq_lens[s];
  const int64_t pos = len - 1;
  const int64_t first = p.window > 0 ? max(int64_t(0), pos - p.window + 1) : 0;
  const int n_parts = int((len - first + part_size - 1) / part_size);
  const int part = blockIdx.x;
  if (!kCluster && part >= n_parts) return;
  const int64_t t0 = first + int64_t(part) * part_size;
  const int n = int(max(int64_t(0), min(int64_t(part_size), len - t0)));

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane % LPT, slot = lane / LPT;
  const int64_t row = p.n_kv_heads * HD;
  const int32_t* table = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
  const int bs = int(p.block_size);
  const int shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;
  const KV* kbase = static_cast<const KV*>(p.k_cache) + kvh * HD + sub * 8;
  const KV* vbase = static_cast<const KV*>(p.v_cache) + kvh * HD + sub * 8;

  float q[TH][8];
#pragma unroll
  for (int h = 0; h < TH; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e)
      q[h][e] = h < nh ? load_f32(p.q, p.q_dtype, int64_t(s) * p.ldq + int64_t(h0 + h) * HD + sub * 8 + e) * p.scale : 0.0f;

  float* scores = smem;
  // Clusters (small batches): the first pass's V rows go out right behind its K rows. They do
  // not depend on the scores, and where a partition is one pass (batch-1 decode) phase 3 then
  // waits for no memory. Not in the split kernel of larger batches, where the extra loads in
  // flight ahead of the scores cost throughput: 1,000 x 128 -> 128 at 13,892-13,976 output tok/s
  // with them against 14,874-14,890 without, 1,000 x 1,000 -> 200 at 3,875 against 4,371
  // (same call, H100, 2026-11-26; batch-1 decode 179.8 / 180.4).
  const int first_base = warp * TPW;
  Raw8<KV> v_first[kUnroll];
  // Phase 1: scores[h][i] = q_h · k_(t0+i)
  for (int base = first_base; base < n; base += STEP * kUnroll) {
    Raw8<KV> kr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * STEP + slot;
      if (i < n) kr[u].load(kbase + slot_of(table, int(t0) + i, bs, shift) * row);
    }
    if (kCluster && base == first_base) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * STEP + slot;
        if (i < n) v_first[u].load(vbase + slot_of(table, int(t0) + i, bs, shift) * row);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * STEP + slot;
      float k[8];
      kr[u].widen(k);
#pragma unroll
      for (int h = 0; h < TH; ++h) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(q[h][e], k[e], d);
#pragma unroll
        for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        if (sub == 0 && i < n) scores[h * part_size + i] = d;
      }
    }
  }
  __syncthreads();

  // Phase 2: softmax numerators per head (max and sum kept for the merge).
  for (int h = warp; h < TH; h += kWarps) {
    float m = -INFINITY;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, scores[h * part_size + i]);
    m = warp_max(m);
    float l = 0.0f;
    for (int i = lane; i < n; i += 32) {
      const float w = __expf(scores[h * part_size + i] - m);
      scores[h * part_size + i] = w;
      l += w;
    }
    l = warp_sum(l);
    if (lane == 0) { s_max[h] = m; s_sum[h] = l; }
  }
  __syncthreads();

  // Phase 3: acc[h] = sum_i w[h][i] * v_(t0+i) over this lane's 8 dims.
  float acc[TH][8];
#pragma unroll
  for (int h = 0; h < TH; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  for (int base = first_base; base < n; base += STEP * kUnroll) {
    Raw8<KV> vr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * STEP + slot;
      if (kCluster && base == first_base) vr[u] = v_first[u];
      else if (i < n) vr[u].load(vbase + slot_of(table, int(t0) + i, bs, shift) * row);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * STEP + slot;
      if (i < n) {
        float v[8];
        vr[u].widen(v);
#pragma unroll
        for (int h = 0; h < TH; ++h) {
          const float w = scores[h * part_size + i];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(w, v[e], acc[h][e]);
        }
      }
    }
  }
  // Sum the token slots of each warp, then the warps (through shared memory).
#pragma unroll
  for (int h = 0; h < TH; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
      for (int o = LPT; o < 32; o <<= 1) acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
  __syncthreads();  // scores are dead; reuse the buffer as red[kWarps][TH][HD]
  float* red = smem;
  if (slot == 0) {
#pragma unroll
    for (int h = 0; h < TH; ++h)
#pragma unroll
      for (int e = 0; e < 8; ++e) red[(warp * TH + h) * HD + sub * 8 + e] = acc[h][e];
  }
  __syncthreads();
  if constexpr (kCluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // This block's partial output into red[0, TH * HD), then a cluster-wide merge in which
    // block r computes outputs r, r + C, ... of the tile from every block's (max, sum, output).
    for (int j = threadIdx.x; j < TH * HD; j += kWarps * 32) {
      float o = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) o += red[w * TH * HD + j];
      red[j] = o;
    }
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const int C = int(cluster.num_blocks()), rank = int(cluster.block_rank());
    for (int j = rank * kWarps * 32 + threadIdx.x; j < TH * HD; j += C * kWarps * 32) {
      const int h = j / HD, d = j % HD;
      if (h >= nh) continue;
      float m = -INFINITY;
      for (int r = 0; r < C; ++r) m = fmaxf(m, *cluster.map_shared_rank(s_max + h, r));
      float l = 0.0f, o = 0.0f;
      for (int r = 0; r < C; ++r) {
        const float w = __expf(*cluster.map_shared_rank(s_max + h, r) - m);  // 0 for an empty partition
        l = fmaf(w, *cluster.map_shared_rank(s_sum + h, r), l);
        o = fmaf(w, *cluster.map_shared_rank(red + j, r), o);
      }
      if constexpr (kFp8) store_f32(p.out, p.out_dtype, int64_t(s) * p.ldo + int64_t(h0 + h) * HD + d, o / l * p.v_scale);
      else store_f32(p.out, p.out_dtype, int64_t(s) * p.ldo + int64_t(h0 + h) * HD + d, o / l);
    }
    cluster.sync();  // the others' shared memory stays until every block has read it
#endif
  } else {
    for (int j = threadIdx.x; j < TH * HD; j += kWarps * 32) {
      const int h = j / HD, d = j % HD;
      if (h >= nh) continue;
      float o = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) o += red[w * TH * HD + j];
      const int64_t head = h0 + h;
      if (n_parts == 1) {
        if constexpr (kFp8) store_f32(p.out, p.out_dtype, int64_t(s) * p.ldo + head * HD + d, o / s_sum[h] * p.v_scale);
        else store_f32(p.out, p.out_dtype, int64_t(s) * p.ldo + head * HD + d, o / s_sum[h]);
      } else {
        const int64_t idx = (int64_t(s) * p.n_heads + head) * max_parts + part;
        float* ws_o = static_cast<float*>(p.workspace);
        float* ws_ml = ws_o + p.n_seqs * p.n_heads * max_parts * HD;
        ws_o[idx * HD + d] = o;
        if (d == 0) { ws_ml[idx * 2] = s_max[h]; ws_ml[idx * 2 + 1] = s_sum[h]; }
      }
    }
  }
}

// Merges the partitions of one (sequence, head): out = sum_p e^(m_p - M) o_p / sum_p e^(m_p - M) l_p.
__global__ void decode_attention_merge_kernel(DecodeAttentionParams p, int part_size, int max_parts) {
  pdl_launch_dependents();
  pdl_wait();
  extern __shared__ float wts[];  // [max_parts]
  __shared__ float s_inv;
  const int s = blockIdx.y, head = blockIdx.x;
  const int64_t len = p.seq_lens[s];
  const int64_t first = p.window > 0 ? max(int64_t(0), len - p.window) : 0;
  const int n_parts = int((len - first + part_size - 1) / part_size);
  if (n_parts == 1) return;  // written directly by the first kernel
  const int64_t idx0 = (int64_t(s) * p.n_heads + head) * max_parts;
  const float* ws_o = static_cast<const float*>(p.workspace);
  const float* ws_ml = ws_o + p.n_seqs * p.n_heads * max_parts * p.head_dim;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n_parts; i += 32) m = fmaxf(m, ws_ml[(idx0 + i) * 2]);
    m = warp_max(m);
    float l = 0.0f;
    for (int i = threadIdx.x; i < n_parts; i += 32) {
      const float w = __expf(ws_ml[(idx0 + i) * 2] - m);
      wts[i] = w;
      l += w * ws_ml[(idx0 + i) * 2 + 1];
    }
    l = warp_sum(l);
    // The V scale of an E4M3 cache (1 otherwise: the same bits as 1 / l).
    if (threadIdx.x == 0) s_inv = (p.kv_dtype == DType::F8_E4M3 ? p.v_scale : 1.0f) / l;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int i = 0; i < n_parts; ++i) o = fmaf(wts[i], ws_o[(idx0 + i) * p.head_dim + d], o);
    store_f32(p.out, p.out_dtype, int64_t(s) * p.ldo + int64_t(head) * p.head_dim + d, o * s_inv);
  }
}

// Up to 8 partitions (the portable cluster size) merge inside a cluster when the whole grid fits
// in one wave: small batches, where the merge kernel's launch costs as much as the merge
// (batch-1 decode +0.8 %, synthetic:llama3-8b, H100). At large batches a cluster's blocks wait
// for each other at its barriers, the empty partitions of its shorter sequences included, and
// the split path with the merge kernel is faster (1,000 x 1,000 throughput 5,931 vs 6,484 tok/s
// with clusters at every size).
bool use_clusters(const DecodeAttentionParams& p, const Split& sp) {
  const int64_t blocks = p.n_seqs * p.n_kv_heads * sp.head_tiles * sp.max_parts;
  return sp.max_parts > 1 && sp.max_parts <= 8 && blocks <= device_sm_count() && clusters_enabled();
}

template <typename KV, int HD>
cudaError_t launch_hd(const DecodeAttentionParams& p, const Split& sp, cudaStream_t stream) {
  const dim3 grid(unsigned(sp.max_parts), unsigned(p.n_kv_heads * sp.head_tiles), unsigned(p.n_seqs));
  const size_t smem = size_t(std::max<int64_t>(sp.tile_heads * sp.part, kWarps * sp.tile_heads * HD)) * 4;
  const bool cluster = use_clusters(p, sp);
  auto go = [&](auto kernel) -> cudaError_t {
    if (smem > 48 * 1024) GALE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    if (cluster)
      GALE_CUDA_TRY(launch_clusters(kernel, grid, kWarps * 32, smem, stream, unsigned(sp.max_parts), p, int(sp.part),
                                    int(sp.max_parts), sp.head_tiles));
    else
      GALE_CUDA_TRY(launch(kernel, grid, kWarps * 32, smem, stream, p, int(sp.part), int(sp.max_parts), sp.head_tiles));
    return cudaGetLastError();
  };
  auto pick = [&](auto kernel_split, auto kernel_cluster) { return cluster ? go(kernel_cluster) : go(kernel_split); };
  switch (sp.tile_heads) {
    case 1: return pick(decode_attention_kernel<KV, HD, 1, false>, decode_attention_kernel<KV, HD, 1, true>);
    case 2: return pick(decode_attention_kernel<KV, HD, 2, false>, decode_attention_kernel<KV, HD, 2, true>);
    case 4: return pick(decode_attention_kernel<KV, HD, 4, false>, decode_attention_kernel<KV, HD, 4, true>);
    default: return pick(decode_attention_kernel<KV, HD, 8, false>, decode_attention_kernel<KV, HD, 8, true>);
  }
}

template <typename KV>
cudaError_t launch_kv(const DecodeAttentionParams& p, const Split& sp, cudaStream_t stream) {
  switch (p.head_dim) {
    case 16: return launch_hd<KV, 16>(p, sp, stream);
    case 32: return launch_hd<KV, 32>(p, sp, stream);
    case 64: return launch_hd<KV, 64>(p, sp, stream);
    case 128: return launch_hd<KV, 128>(p, sp, stream);
    case 256: return launch_hd<KV, 256>(p, sp, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t decode_attention_workspace_size(const DecodeAttentionParams& p) {
  if (p.n_seqs <= 0 || p.n_kv_heads <= 0) return 0;
  const Split sp = choose_split(p);
  if (sp.max_parts <= 1) return 0;
  return size_t(p.n_seqs * p.n_heads * sp.max_parts) * size_t(p.head_dim + 2) * sizeof(float);
}

cudaError_t decode_attention(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (p.n_seqs <= 0) return cudaSuccess;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads || p.block_size <= 0 || p.max_seq_len <= 0 ||
      p.n_seqs > 65535 || (p.q_dtype != DType::F32 && p.q_dtype != DType::BF16) ||
      (p.out_dtype != DType::F32 && p.out_dtype != DType::BF16))
    return cudaErrorInvalidValue;
  if (p.partition_size != 0 &&
      (p.partition_size < 64 || p.partition_size > 512 || (p.partition_size & (p.partition_size - 1))))
    return cudaErrorInvalidValue;
  const Split sp = choose_split(p);
  if (sp.max_parts > 1 && !use_clusters(p, sp) && !p.workspace) return cudaErrorInvalidValue;
  cudaError_t err;
  if (p.kv_dtype == DType::BF16) {
    err = launch_kv<__nv_bfloat16>(p, sp, stream);
  } else if (p.kv_dtype == DType::F32) {
    err = launch_kv<float>(p, sp, stream);
  } else if (p.kv_dtype == DType::F8_E4M3) {
    if (!(p.k_scale > 0.0f && p.v_scale > 0.0f)) return cudaErrorInvalidValue;
    DecodeAttentionParams q = p;
    q.scale = p.scale * p.k_scale;  // scores = (q · stored K) * softmax scale * K scale
    err = launch_kv<__nv_fp8_e4m3>(q, sp, stream);
  } else {
    return cudaErrorInvalidValue;
  }
  if (err != cudaSuccess || sp.max_parts <= 1 || use_clusters(p, sp)) return err;
  // Padded to whole 16-byte words: the compiler may read the weights as vectors.
  const size_t merge_smem = size_t((sp.max_parts + 3) / 4 * 4 + 4) * 4;
  GALE_CUDA_TRY(launch(decode_attention_merge_kernel, dim3(unsigned(p.n_heads), unsigned(p.n_seqs)), 128, merge_smem, stream, p, int(sp.part), int(sp.max_parts)));
  return cudaGetLastError();
}

}  // namespace gale::cuda
