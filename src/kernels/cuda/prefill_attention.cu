#include "kernels/cuda/prefill_attention.cuh"
#include "kernels/cuda/kv_fp8.cuh"
#include "kernels/cuda/mma.cuh"

namespace gale::cuda {

namespace {

constexpr int kBM = 64;       // query rows per block (16 per warp)
constexpr int kBN = 64;       // keys per tile
constexpr int kThreads = 128;

// Shared-memory tiles are [rows][HD] bf16 with the 16-byte chunks of row r XOR-swizzled by
// r % 8, so the 8 row addresses of each ldmatrix hit 8 different bank groups (rows of fewer
// than 8 chunks, head_dim 16 or 32, swizzle within the row: r % chunks).
template <int HD>
__device__ __forceinline__ int swz(int r, int chunk) {
  constexpr int kMask = (HD / 8 < 8 ? HD / 8 : 8) - 1;
  return r * HD + ((chunk ^ (r & kMask)) << 3);
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// 8 E4M3 values as 8 bf16 (exact) in one 16-byte word.
__device__ __forceinline__ uint4 e4m3x8_to_bf16x8(uint2 u) {
  float f[8];
  widen8_e4m3(u, f);
  return make_uint4(pack_bf16(f[0], f[1]), pack_bf16(f[2], f[3]), pack_bf16(f[4], f[5]), pack_bf16(f[6], f[7]));
}

// kFp8: K/V are E4M3 (see the header); else bf16, copied by cp.async.
template <int HD, bool kFp8>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PrefillAttentionParams p) {
  pdl_launch_dependents();
  pdl_wait();
  constexpr int CH = HD / 8;  // 16-byte chunks per row (of bf16 in shared memory)
  constexpr int kChunks = kBN * CH / kThreads;  // E4M3: chunks of a K (and of a V) tile per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sK = sQ + kBM * HD;       // [2][kBN][HD]
  __nv_bfloat16* sV = sK + 2 * kBN * HD;   // [2][kBN][HD]

  const int s = blockIdx.z, h = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[s];
  const int n_q = p.cu_seqlens_q[s + 1] - q_begin;
  // Last query tile first: under the causal mask the last tiles have the most keys, and
  // starting them first keeps the grid's tail short (blockIdx.x varies fastest in launch order).
  const int qi0 = int(gridDim.x - 1 - blockIdx.x) * kBM;
  if (qi0 >= n_q) return;
  const int64_t start = p.start_pos[s];
  const int64_t kv_len = start + n_q;
  const int kvh = int(h / (p.n_heads / p.n_kv_heads));
  const int64_t qpos_lo = start + qi0;
  const int64_t qpos_hi = start + min(qi0 + kBM, n_q) - 1;
  const int64_t key_lo = p.window > 0 ? max(int64_t(0), qpos_lo - p.window + 1) : 0;  // first key any row needs
  const int64_t tile0 = key_lo / kBN * kBN;
  const int n_tiles = int((qpos_hi + 1 - tile0 + kBN - 1) / kBN);
  const int32_t* table = p.block_tables + int64_t(s) * p.max_blocks_per_seq;
  const int64_t kv_row = p.n_kv_heads * HD;
  const int bs = int(p.block_size);
  const int shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;
  const __nv_bfloat16* qg = static_cast<const __nv_bfloat16*>(p.q);
  const __nv_bfloat16* kg = static_cast<const __nv_bfloat16*>(p.k_cache);
  const __nv_bfloat16* vg = static_cast<const __nv_bfloat16*>(p.v_cache);
  const uint8_t* kg8 = static_cast<const uint8_t*>(p.k_cache);
  const uint8_t* vg8 = static_cast<const uint8_t*>(p.v_cache);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // Q tile (rows past n_q zero-filled).
  for (int c = tid; c < kBM * CH; c += kThreads) {
    const int r = c / CH, ch = c % CH;
    const bool ok = qi0 + r < n_q;
    const __nv_bfloat16* src = ok ? qg + int64_t(q_begin + qi0 + r) * p.ldq + int64_t(h) * HD + ch * 8 : qg;
    cp_async16(sQ + swz<HD>(r, ch), src, ok ? 16 : 0);
  }
  // K/V tile j into buffer b; keys outside [key_lo, kv_len) are zero-filled and never read
  // (their blocks may be freed by a sliding-window runtime).
  // E4M3: element offset of chunk ch of key kp in the cache, -1 outside [key_lo, kv_len).
  auto kv_offset = [&](int64_t kp, int ch) -> int64_t {
    if (kp < key_lo || kp >= kv_len) return -1;
    const int t = int(kp), blk = shift >= 0 ? t >> shift : t / bs;  // 32-bit: see decode_attention.cu
    return (int64_t(table[blk]) * bs + (t - blk * bs)) * kv_row + kvh * HD + ch * 8;
  };
  auto load_kv = [&](int j, int b) {
    const int64_t k0 = tile0 + int64_t(j) * kBN;
    for (int c = tid; c < kBN * CH; c += kThreads) {
      const int r = c / CH, ch = c % CH;
      const int64_t kp = k0 + r;
      const bool ok = kp >= key_lo && kp < kv_len;
      int64_t off = 0;
      if (ok) {
        const int t = int(kp), blk = shift >= 0 ? t >> shift : t / bs;  // 32-bit: see decode_attention.cu
        off = (int64_t(table[blk]) * bs + (t - blk * bs)) * kv_row + kvh * HD + ch * 8;
      }
      cp_async16(sK + b * kBN * HD + swz<HD>(r, ch), kg + off, ok ? 16 : 0);
      cp_async16(sV + b * kBN * HD + swz<HD>(r, ch), vg + off, ok ? 16 : 0);
    }
  };
  // E4M3: tile j's raw bytes into registers (fetch, before the tile ahead is computed), then
  // widened into buffer b (stash, after it).
  uint2 rk[kChunks], rv[kChunks];
  auto fetch = [&](int j) {
    const int64_t k0 = tile0 + int64_t(j) * kBN;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = tid + i * kThreads, r = c / CH, ch = c % CH;
      const int64_t off = kv_offset(k0 + r, ch);
      rk[i] = off >= 0 ? *reinterpret_cast<const uint2*>(kg8 + off) : make_uint2(0, 0);
      rv[i] = off >= 0 ? *reinterpret_cast<const uint2*>(vg8 + off) : make_uint2(0, 0);
    }
  };
  auto stash = [&](int b) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = tid + i * kThreads, r = c / CH, ch = c % CH;
      *reinterpret_cast<uint4*>(sK + b * kBN * HD + swz<HD>(r, ch)) = e4m3x8_to_bf16x8(rk[i]);
      *reinterpret_cast<uint4*>(sV + b * kBN * HD + swz<HD>(r, ch)) = e4m3x8_to_bf16x8(rv[i]);
    }
  };
  if constexpr (kFp8) {
    cp_async_commit();  // the Q tile
    fetch(0);
    stash(0);
    cp_async_wait<0>();
  } else {
    load_kv(0, 0);
    cp_async_commit();
  }

  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float sl2 = (kFp8 ? p.scale * p.k_scale : p.scale) * 1.4426950408889634f;  // softmax in base 2
  const int r_lo = warp * 16 + lane / 4;            // this thread's rows r_lo and r_lo + 8
  const int64_t qp[2] = {start + qi0 + r_lo, start + qi0 + r_lo + 8};

  for (int j = 0; j < n_tiles; ++j) {
    const int b = j & 1;
    if constexpr (kFp8) {
      if (j + 1 < n_tiles) fetch(j + 1);  // in flight while tile j is computed
    } else if (j + 1 < n_tiles) {
      load_kv(j + 1, b ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks)
        ldmatrix_x4(qf[ks], sQ + swz<HD>(warp * 16 + lane % 16, ks * 2 + lane / 16));
    }
    const __nv_bfloat16* tK = sK + b * kBN * HD;
    const __nv_bfloat16* tV = sV + b * kBN * HD;

    // S = Q·Kᵀ for this warp's 16 rows and the 64 keys.
    float sc[kBN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
#pragma unroll
      for (int nt = 0; nt < kBN / 8; nt += 2) {
        uint32_t kb[4];
        const int key = nt * 8 + (lane / 16) * 8 + lane % 8;
        ldmatrix_x4(kb, tK + swz<HD>(key, ks * 2 + (lane / 8) % 2));
        mma_bf16(sc[nt], qf[ks], kb);
        mma_bf16(sc[nt + 1], qf[ks], kb + 2);
      }
    }
    // Mask (causal, window, range) and online softmax; each row lives in a quad of lanes.
    const int64_t k0 = tile0 + int64_t(j) * kBN;
    // Only tiles on the diagonal or the window's edge need the per-element mask.
    const bool need_mask = k0 + kBN - 1 > qpos_lo || k0 < key_lo || (p.window > 0 && k0 <= qpos_hi - p.window);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bool ok = true;
        if (need_mask) {
          const int64_t kp = k0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          const int64_t q_p = qp[e >> 1];
          ok = kp <= q_p && kp >= key_lo && (p.window <= 0 || kp > q_p - p.window);
        }
        sc[nt][e] = ok ? sc[nt][e] * sl2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
      }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row so far
      corr[r] = exp2f(m_run[r] - m_use);
      m_run[r] = m_new;
      mx[r] = m_use;
      l_run[r] *= corr[r];
    }
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[nt][e] = exp2f(sc[nt][e] - mx[e >> 1]);
        l_run[e >> 1] += sc[nt][e];
      }
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      o[dt][0] *= corr[0]; o[dt][1] *= corr[0];
      o[dt][2] *= corr[1]; o[dt][3] *= corr[1];
    }
    // O += P·V: the S accumulator layout of two n-tiles is the A-operand layout of one k-step.
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
      pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
      pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt += 2) {
        uint32_t vb[4];
        const int key = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
        ldmatrix_x4_trans(vb, tV + swz<HD>(key, dt + lane / 16));
        mma_bf16(o[dt], pa, vb);
        mma_bf16(o[dt + 1], pa, vb + 2);
      }
    }
    // E4M3: tile j + 1 into the other buffer, last read in iteration j - 1 (whose closing
    // barrier every thread has passed).
    if constexpr (kFp8)
      if (j + 1 < n_tiles) stash(b ^ 1);
    __syncthreads();  // buffer b is refilled by the next iteration's prefetch
  }

  // Normalize and store.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = qi0 + r_lo + r * 8;
    if (qi >= n_q) continue;
    const float inv = (kFp8 ? p.v_scale : 1.0f) / l_run[r];
    const int64_t base = int64_t(q_begin + qi) * p.ldo + int64_t(h) * HD + (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      const float a = o[dt][2 * r] * inv, c = o[dt][2 * r + 1] * inv;
      if (p.out_dtype == DType::BF16) {
        *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + base + dt * 8) = __floats2bfloat162_rn(a, c);
      } else {
        *reinterpret_cast<float2*>(static_cast<float*>(p.out) + base + dt * 8) = make_float2(a, c);
      }
    }
  }
}

template <int HD, bool kFp8>
cudaError_t launch_hd(const PrefillAttentionParams& p, cudaStream_t stream) {
  const size_t smem = size_t(kBM + 4 * kBN) * HD * 2;  // Q + double-buffered K and V (bf16)
  auto kernel = prefill_attention_kernel<HD, kFp8>;
  GALE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned((p.max_q_len + kBM - 1) / kBM), unsigned(p.n_heads), unsigned(p.n_seqs));
  GALE_CUDA_TRY(launch(kernel, grid, kThreads, smem, stream, p));
  return cudaGetLastError();
}

template <bool kFp8>
cudaError_t launch_kv(const PrefillAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 16: return launch_hd<16, kFp8>(p, stream);
    case 32: return launch_hd<32, kFp8>(p, stream);
    case 64: return launch_hd<64, kFp8>(p, stream);
    case 128: return launch_hd<128, kFp8>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  if (p.n_seqs <= 0 || p.max_q_len <= 0) return cudaSuccess;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads || p.block_size <= 0 || p.n_seqs > 65535 ||
      p.n_heads > 65535 || (p.out_dtype != DType::F32 && p.out_dtype != DType::BF16) || p.ldq % 8)
    return cudaErrorInvalidValue;
  if (p.kv_dtype == DType::BF16) return launch_kv<false>(p, stream);
  if (p.kv_dtype == DType::F8_E4M3 && p.k_scale > 0.0f && p.v_scale > 0.0f) return launch_kv<true>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace gale::cuda
