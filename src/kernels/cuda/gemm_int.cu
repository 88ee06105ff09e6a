#include "kernels/cuda/gemm_int.cuh"

#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/silu_mul.cuh"

namespace gale::cuda {

// ---- host: the device layout ------------------------------------------------------------------

void int_pack(const IntHostMatrix& src, int64_t N, int64_t (*dst_row)(int64_t r, const void* ctx), const void* ctx,
              uint8_t* codes, float* scales, uint8_t* zeros) {
  GALE_ASSERT((src.bits == 4 || src.bits == 8) && src.rows >= 0 && src.cols > 0 && src.ld >= src.cols);
  GALE_ASSERT(src.bits == 8 || (src.cols % 2 == 0 && src.ld % 2 == 0));
  const int64_t K = src.cols, ng = int_scales_per_row(K, src.group);
  parallel_for(
      src.rows,
      [&](int64_t b, int64_t e, int) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t d = dst_row ? dst_row(r, ctx) : r;
          GALE_ASSERT(d >= 0 && d < N);
          // Whole 8-column chunks are one INT4 word / 8 consecutive INT8 bytes of the layout.
          const int64_t whole = K / 8 * 8;
          if (src.bits == 8) {
            const int8_t* row = static_cast<const int8_t*>(src.codes) + r * src.ld;
            for (int64_t c = 0; c < whole; c += 8) {
              uint8_t* o = codes + int_code_pos(8, K, d, c).byte;
              for (int e = 0; e < 8; ++e) o[e] = uint8_t(int(row[c + e]) + 128);
            }
            for (int64_t c = whole; c < K; ++c) codes[int_code_pos(8, K, d, c).byte] = uint8_t(int(row[c]) + 128);
          } else {
            const uint8_t* row = static_cast<const uint8_t*>(src.codes) + r * (src.ld / 2);
            for (int64_t c = 0; c < whole; c += 8) {
              uint32_t word = 0;
              for (int e = 0; e < 8; ++e) {
                const uint32_t q = e % 2 == 0 ? row[(c + e) / 2] & 0xF : row[(c + e) / 2] >> 4;
                word |= q << (4 * (e % 2 == 0 ? e / 2 : 4 + e / 2));
              }
              uint8_t* o = codes + int_code_pos(4, K, d, c).byte;
              for (int b2 = 0; b2 < 4; ++b2) o[b2] = uint8_t(word >> (8 * b2));
            }
            for (int64_t c = whole; c < K; ++c) {
              const int q = c % 2 == 0 ? row[c / 2] & 0xF : row[c / 2] >> 4;
              const IntCodePos pos = int_code_pos(4, K, d, c);
              codes[pos.byte] = uint8_t(codes[pos.byte] | (q << pos.shift));  // a byte belongs to one row
            }
          }
          for (int64_t gi = 0; gi < ng; ++gi) {
            const int64_t s = r * src.scale_ld + gi, o = int_scale_pos(ng, d, gi);
            scales[o] = src.scale[s];
            if (zeros) zeros[o] = src.zero ? src.zero[s] : uint8_t(8);
          }
        }
      },
      std::max<int64_t>(1, 16384 / K));
}

namespace {

// ---- device: unpacking ----------------------------------------------------------------------

constexpr int kWarps = 8;       // per block
constexpr int kUnroll = 4;      // 16-byte weight loads in flight per lane (x 8 warps x 32 lanes)
constexpr int kFuseMaxRows = 4;
constexpr int kFuseMaxBytes = 32 * 1024;
enum Epilogue { kStore, kSwiGLU, kRopeKV };  // what happens to the products (GemvFusion)

__device__ __forceinline__ uint32_t bf16x2_sub(uint32_t a, uint32_t b) {
  __nv_bfloat162 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const __nv_bfloat162 r = __hsub2(x, y);  // exact: integers below 2⁸
  uint32_t o;
  memcpy(&o, &r, 4);
  return o;
}

// INT4: the A operands of k-steps 0 and 1 of a 32-column half from the words of rows g and g + 8
// (layout in gemm_int.cuh); zg / zg8: bf16x2 bits of 128 + z for each row. a[ss] = {a0 a1 a2 a3}
// of mma.m16n8k16: rows g, g + 8 at k positions 2t, 2t+1 (a0, a1) and 2t+8, 2t+9 (a2, a3).
__device__ __forceinline__ void a_int4(uint32_t wg, uint32_t wg8, uint32_t zg, uint32_t zg8, uint32_t (&a)[2][4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // nibble pair j: columns c + 2j, c + 2j + 1
    const uint32_t lo = ((wg >> (4 * j)) & 0x000F000Fu) | 0x43004300u;
    const uint32_t hi = ((wg8 >> (4 * j)) & 0x000F000Fu) | 0x43004300u;
    a[j / 2][(j % 2) * 2] = bf16x2_sub(lo, zg);
    a[j / 2][(j % 2) * 2 + 1] = bf16x2_sub(hi, zg8);
  }
}

// INT8 (stored q + 128): bytes j0, j0 + 1 of w as the exact bf16 pair (q, q'): 0x4B0000xx is the
// f32 2²³ + xx, so subtracting 2²³ + 128 leaves q.
__device__ __forceinline__ uint32_t i8_pair(uint32_t w, int j0) {
  const float f0 = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u + j0)) - 8388736.0f;
  const float f1 = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7441u + j0)) - 8388736.0f;
  const __nv_bfloat162 h = __floats2bfloat162_rn(f0, f1);
  uint32_t o;
  memcpy(&o, &h, 4);
  return o;
}
__device__ __forceinline__ void a_int8(const uint4& w, uint32_t (&a)[2][4]) {
  const uint32_t rg[2] = {w.x, w.y}, rg8[2] = {w.z, w.w};  // row g, row g + 8: columns c..c+3, c+4..c+7
#pragma unroll
  for (int ss = 0; ss < 2; ++ss) {
    a[ss][0] = i8_pair(rg[ss], 0);
    a[ss][1] = i8_pair(rg8[ss], 0);
    a[ss][2] = i8_pair(rg[ss], 2);
    a[ss][3] = i8_pair(rg8[ss], 2);
  }
}

// Writes RMSNorm of the M f32 input rows into shared memory xs[M][K] (bf16), rmsnorm_residual's
// formula (as gemv_bf16's staging).
template <int M>
__device__ void stage_rmsnorm(const IntGemmParams& p, const GemvFusion& in, __nv_bfloat16* xs) {
  const int64_t K = p.w.K;
  const int chunks = int(K / 8);
  __shared__ float part[kWarps][M];
  __shared__ float inv[M];
  float ss[M];
#pragma unroll
  for (int m = 0; m < M; ++m) ss[m] = 0.0f;
  for (int c = threadIdx.x; c < chunks; c += kWarps * 32)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v[8];
      load8(static_cast<const float*>(p.x) + m * p.ldx + 8 * c, v);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss[m] = fmaf(v[e], v[e], ss[m]);
    }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    ss[m] = warp_sum(ss[m]);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32][m] = ss[m];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float t = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += part[w][threadIdx.x];
    inv[threadIdx.x] = rsqrtf(t / float(K) + in.eps);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < chunks; c += kWarps * 32) {
    float wn[8];
    load8(in.norm_weight + 8 * c, wn);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v[8];
      load8(static_cast<const float*>(p.x) + m * p.ldx + 8 * c, v);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = wn[e] * (v[e] * inv[m]);
      store8(xs + m * K + 8 * c, v);
    }
  }
  __syncthreads();
}

// The row tiles of a block: warp group rw (of RT) takes WT tiles, tile_of(rw * WT + w). As
// laid out (tile b·RT·WT + that index), or for the RoPE epilogue (RT 1, WT 2) a q/k tile of
// head dims [16j, 16j + 16) with its rotation partner half a head on, then v's tiles in pairs.
template <int RT, int WT, int EPI>
__device__ __forceinline__ int64_t tile_of(const GemvFusion& in, int idx) {
  const int64_t b = blockIdx.x;
  if constexpr (EPI == kRopeKV) {
    const int64_t hd = in.rk.head_dim, per = hd / 32, rot_blocks = (in.rk.n_q + in.rk.n_k) / 32;
    if (b < rot_blocks) return b / per * (hd / 16) + b % per + idx * per;
    return 2 * b + idx;
  } else {
    return b * RT * WT + idx;
  }
}

// One block: RT warp groups x WT row tiles each (16 rows a tile) x 8·NT tokens (blockIdx.y picks
// which); the 8 / RT warps of a group take interleaved slices of K (KS), whose partial sums
// meet in shared memory. A warp walks its tiles' K kUnroll tiles at a time (one 16-byte load
// per lane and row tile each, all in flight before the first is used); WT > 1 shares each
// load of x among its row tiles. MR: the fused RMSNorm's row count (0: x plain bf16 rows).
template <int BITS, bool ZP, int NT, int RT, int WT, int MR, int EPI>
__global__ void __launch_bounds__(kWarps * 32) gemm_int_kernel(IntGemmParams p, GemvFusion in) {
  pdl_launch_dependents();
  constexpr int KS = kWarps / RT;
  constexpr int kTileCols = BITS == 4 ? 64 : 32, kHalves = kTileCols / 32;
  extern __shared__ uint4 staged[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int rw = warp % RT, ks = warp / RT;
  const IntMatrix& W = p.w;
  const int64_t KT = int_k_tiles(BITS, W.K), n_tiles = int_row_tiles(W.N);
  const int64_t tok0 = int64_t(blockIdx.y) * 8 * NT;
  int64_t rt[WT];
  bool on[WT];
  const uint4* wt[WT];
  const float* srow[WT];
  const uint8_t* zrow[WT];
#pragma unroll
  for (int w = 0; w < WT; ++w) {
    rt[w] = tile_of<RT, WT, EPI>(in, rw * WT + w);
    on[w] = rt[w] < n_tiles;
    const int64_t r = on[w] ? rt[w] : 0;
    wt[w] = reinterpret_cast<const uint4*>(W.w) + r * KT * 32 + lane;
    srow[w] = W.scale + r * W.ng * 16;
    zrow[w] = ZP ? W.zero + r * W.ng * 16 : nullptr;
  }
  const bool active = on[0];  // tiles past the last come last
  const int64_t steps = (KT + int64_t(kUnroll) * KS - 1) / (int64_t(kUnroll) * KS);

  // The scale group of a 32-column half starting at column c0: a shift for power-of-two groups
  // (a 64-bit division per half would cost more than the half's whole dot product), clamped for
  // halves in K's padding.
  const unsigned gdiv = W.group > 0 ? unsigned(W.group) : 0u, glast = unsigned(W.ng - 1);
  const bool gpow2 = gdiv != 0 && (gdiv & (gdiv - 1)) == 0;
  const int gshift = gpow2 ? __ffs(int(gdiv)) - 1 : 0;
  const auto group_of = [&](unsigned c0) -> unsigned {
    if (gdiv == 0) return 0u;
    return min(gpow2 ? c0 >> gshift : c0 / gdiv, glast);
  };

  uint4 wr[WT][kUnroll];
  float sc[WT][kUnroll][kHalves][2];
  uint32_t zc[WT][kUnroll][kHalves][2];
  // Tile u of step i: its codes, and the scales (zero points) of rows g, g + 8 for each half.
  const auto load = [&](int64_t i) {
#pragma unroll
    for (int w = 0; w < WT; ++w)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t kt = (i * KS + ks) * kUnroll + u;
        const bool ok = on[w] && kt < KT;
        wr[w][u] = ok ? __ldcs(wt[w] + kt * 32) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          const unsigned gi = group_of(unsigned(kt) * kTileCols + 32 * h);
          sc[w][u][h][0] = ok ? __ldg(srow[w] + gi * 16 + g) : 0.0f;
          sc[w][u][h][1] = ok ? __ldg(srow[w] + gi * 16 + g + 8) : 0.0f;
          if constexpr (BITS == 4) {
            const uint32_t z0 = ZP && ok ? __ldg(zrow[w] + gi * 16 + g) : 8u;
            const uint32_t z1 = ZP && ok ? __ldg(zrow[w] + gi * 16 + g + 8) : 8u;
            zc[w][u][h][0] = (0x4300u | z0) * 0x00010001u;
            zc[w][u][h][1] = (0x4300u | z1) * 0x00010001u;
          }
        }
      }
  };
  // The first loads of W (never written by a kernel) go out before the wait for x: with PDL they
  // overlap the previous kernel's tail.
  if (steps > 0) load(0);
  pdl_wait();
  const __nv_bfloat16* xs = nullptr;  // staged rows (MR > 0)
  if constexpr (MR > 0) {
    __nv_bfloat16* s = reinterpret_cast<__nv_bfloat16*>(staged);
    stage_rmsnorm<MR>(p, in, s);
    xs = s;
  }
  const int64_t M = MR > 0 ? MR : p.M;
  // x chunk [c, c + 8) of token `tok` (zero past M or K).
  const auto ldx = [&](int64_t tok, int c) -> uint4 {
    if (tok >= M || c >= W.K) return make_uint4(0, 0, 0, 0);
    if constexpr (MR > 0) return *reinterpret_cast<const uint4*>(xs + tok * W.K + c);
    else return __ldg(reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.x) + tok * p.ldx + c));
  };

  float acc[WT][NT][4];
#pragma unroll
  for (int w = 0; w < WT; ++w)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[w][j][e] = 0.0f;
  for (int64_t i = 0; i < steps; ++i) {
    if (i > 0) load(i);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kt = (i * KS + ks) * kUnroll + u;
      if (!active || kt >= KT) continue;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        const int c = int(kt) * kTileCols + 32 * h + 8 * t;
        uint4 xb[NT];
#pragma unroll
        for (int j = 0; j < NT; ++j) xb[j] = ldx(tok0 + 8 * j + g, c);
#pragma unroll
        for (int w = 0; w < WT; ++w) {
          uint32_t a[2][4];
          if constexpr (BITS == 4) {
            const uint4& q = wr[w][u];
            a_int4(h == 0 ? q.x : q.z, h == 0 ? q.y : q.w, zc[w][u][h][0], zc[w][u][h][1], a);
          } else {
            a_int8(wr[w][u], a);
          }
          // The half's integer dot products, then its scales (groups are whole halves).
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const uint32_t b0[2] = {xb[j].x, xb[j].y}, b1[2] = {xb[j].z, xb[j].w};
            mma_bf16(part, a[0], b0);
            mma_bf16(part, a[1], b1);
            acc[w][j][0] = fmaf(part[0], sc[w][u][h][0], acc[w][j][0]);
            acc[w][j][1] = fmaf(part[1], sc[w][u][h][0], acc[w][j][1]);
            acc[w][j][2] = fmaf(part[2], sc[w][u][h][1], acc[w][j][2]);
            acc[w][j][3] = fmaf(part[3], sc[w][u][h][1], acc[w][j][3]);
          }
        }
      }
    }
  }
  // The K slices' partial sums: [warp][element][lane], so each store and load is one
  // conflict-free row of 32 floats; the first slice's warps (ks 0) finish.
  if constexpr (KS > 1) {
    __shared__ float red[kWarps][WT * NT * 4][32];
#pragma unroll
    for (int w = 0; w < WT; ++w)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][(w * NT + j) * 4 + e][lane] = acc[w][j][e];
    __syncthreads();
    if (ks == 0) {
#pragma unroll
      for (int k2 = 1; k2 < KS; ++k2)
#pragma unroll
        for (int w = 0; w < WT; ++w)
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[w][j][e] += red[warp + k2 * RT][(w * NT + j) * 4 + e][lane];
    }
  }
  // D fragment: acc[w][j][0..1] row g, acc[w][j][2..3] row g + 8; tokens 8j + 2t, 8j + 2t + 1.
  if constexpr (EPI == kRopeKV) {
    // As a plain bf16 product would store them, then rope_kv_write's steps: tile 0 holds head
    // dims d = [16j, 16j + 16) of a q or k head (or v features), tile 1 dims d + head_dim / 2.
    static_assert(RT == 1 && WT == 2 && NT == 1, "the RoPE epilogue pairs two tiles of one warp group");
    __shared__ float ex[2][16][8];
    if (ks == 0)
#pragma unroll
      for (int w = 0; w < 2; ++w)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          ex[w][g + (e >= 2 ? 8 : 0)][2 * t + (e & 1)] = __bfloat162float(__float2bfloat16_rn(acc[w][0][e]));
    __syncthreads();
    const GemvFusion::RopeKV& r = in.rk;
    __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y);
    const int64_t row = r.n_k;  // one cache row: the kv heads of one token
    const int i = threadIdx.x % 16, m = threadIdx.x / 16 % 8, w = threadIdx.x / 128;
    if (m >= M) return;
    const int32_t slot = r.slots[m];
    const int64_t n0 = rt[0] * 16 + i;
    if (n0 < r.n_q + r.n_k) {
      if (w != 0) return;
      const int64_t half = r.head_dim / 2, head0 = n0 / r.head_dim * r.head_dim, d = n0 - head0;
      const float2 v = rope_rotate(ex[0][i][m], ex[1][i][m], r.cos[m * half + d], r.sin[m * half + d]);
      const __nv_bfloat16 lo = __float2bfloat16_rn(v.x), hi = __float2bfloat16_rn(v.y);
      y[m * p.ldy + head0 + d] = lo;
      y[m * p.ldy + head0 + d + half] = hi;
      if (head0 >= r.n_q && slot >= 0) {
        __nv_bfloat16* k = static_cast<__nv_bfloat16*>(r.k_cache) + int64_t(slot) * row + (head0 - r.n_q);
        k[d] = lo;
        k[d + half] = hi;
      }
    } else {
      const int64_t n = rt[w] * 16 + i;
      const __nv_bfloat16 v = __float2bfloat16_rn(ex[w][i][m]);
      y[m * p.ldy + n] = v;
      if (slot >= 0) static_cast<__nv_bfloat16*>(r.v_cache)[int64_t(slot) * row + (n - r.n_q - r.n_k)] = v;
    }
    return;
  } else {
    if (ks != 0) return;
#pragma unroll
    for (int w = 0; w < WT; ++w) {
      if (!on[w]) continue;
      const int64_t row0 = rt[w] * 16 + g;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t row = row0 + (e >= 2 ? 8 : 0), tok = tok0 + 8 * j + 2 * t + (e & 1);
          if constexpr (EPI == kSwiGLU) {
            // gate|up interleaved by four: rows 8b..8b+3 gate 4b..4b+3, 8b+4..8b+7 up; a lane of
            // rows g < 4 finds its up rows 16 lanes on (g + 4). (on[w] is the same for the warp.)
            const float up = __shfl_down_sync(0xffffffffu, acc[w][j][e], 16);
            if (g < 4 && row < W.N && tok < M) {
              const float gv = __bfloat162float(__float2bfloat16_rn(acc[w][j][e]));
              const float uv = __bfloat162float(__float2bfloat16_rn(up));
              static_cast<__nv_bfloat16*>(p.y)[tok * p.ldy + row / 8 * 4 + row % 8] =
                  __float2bfloat16_rn(silu_times(gv, uv));
            }
          } else {
            if (row >= W.N || tok >= M) continue;
            const int64_t o = tok * p.ldy + row;
            float v = acc[w][j][e];
            if (p.accumulate) v += load_f32(p.y, p.y_dtype, o);
            store_f32(p.y, p.y_dtype, o, v);
          }
        }
    }
  }
}

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; }

// K below 2³⁰: the kernel's column arithmetic is 32-bit.
bool valid_matrix(const IntMatrix& w) {
  return w.w && w.scale && (w.bits == 4 || w.bits == 8) && (w.bits == 4 || !w.zero) && w.N > 0 && w.K > 0 &&
         w.K < (int64_t(1) << 30) && w.group >= 0 && w.group % 32 == 0 && w.group < (int64_t(1) << 30) &&
         w.ng == int_scales_per_row(w.K, w.group) && aligned16(w.w);
}

// Launches the kernel for this (NT, RT, WT, MR, EPI) with the weights' template arguments.
template <int NT, int RT, int WT, int MR, int EPI>
cudaError_t launch_int(const IntGemmParams& p, const GemvFusion& in, cudaStream_t stream) {
  const dim3 grid(unsigned((int_row_tiles(p.w.N) + RT * WT - 1) / (RT * WT)),
                  unsigned(MR > 0 ? 1 : (p.M + 8 * NT - 1) / (8 * NT)));
  if (grid.y > 65535) return cudaErrorInvalidValue;
  const size_t smem = MR > 0 ? size_t(MR * p.w.K) * 2 : 0;
  if (p.w.bits == 8)
    return launch(gemm_int_kernel<8, false, NT, RT, WT, MR, EPI>, grid, kWarps * 32, smem, stream, p, in);
  if (p.w.zero) return launch(gemm_int_kernel<4, true, NT, RT, WT, MR, EPI>, grid, kWarps * 32, smem, stream, p, in);
  return launch(gemm_int_kernel<4, false, NT, RT, WT, MR, EPI>, grid, kWarps * 32, smem, stream, p, in);
}

__global__ void dequantize_int_kernel(IntMatrix w, int64_t r0, int64_t n, __nv_bfloat16* dst, int64_t ld) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * w.K) return;
  const int64_t r = r0 + i / w.K, c = i % w.K;
  const IntCodePos pos = int_code_pos(w.bits, w.K, r, c);
  const uint8_t byte = static_cast<const uint8_t*>(w.w)[pos.byte];
  const int64_t gi = w.group > 0 ? c / w.group : 0, so = int_scale_pos(w.ng, r, gi);
  int q;
  if (w.bits == 8) q = int(byte) - 128;
  else q = int((byte >> pos.shift) & 0xF) - (w.zero ? int(w.zero[so]) : 8);
  dst[(i / w.K) * ld + c] = __float2bfloat16_rn(float(q) * w.scale[so]);
}

__global__ void gather_cols_kernel(const __nv_bfloat16* src, int64_t lds, const int32_t* perm, __nv_bfloat16* dst,
                                   int64_t ldd, int64_t K) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t m = blockIdx.y;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < K; j += int64_t(gridDim.x) * blockDim.x)
    dst[m * ldd + j] = src[m * lds + perm[j]];
}

}  // namespace

bool gemm_int_supported(const IntGemmParams& p) {
  return valid_matrix(p.w) && p.w.K % 8 == 0 && p.ldx % 8 == 0 && aligned16(p.x) && p.M >= 1 &&
         (p.y_dtype == DType::BF16 || p.y_dtype == DType::F32) && p.ldy >= p.w.N;
}

bool gemv_int_fusable(const IntGemmParams& p, const GemvFusion& in) {
  if (in.kind != GemvFusion::kRMSNorm || !in.norm_weight || !aligned16(in.norm_weight)) return false;
  if (!valid_matrix(p.w) || p.w.K % 8 || p.ldx % 8 || !aligned16(p.x) || p.M < 1 || p.M > kFuseMaxRows ||
      p.M * p.w.K * 2 > kFuseMaxBytes)
    return false;
  if (in.swiglu && in.rope) return false;
  if (in.swiglu) return p.w.N % 8 == 0 && p.y_dtype == DType::BF16 && !p.accumulate && p.ldy >= p.w.N / 2;
  if (in.rope) {  // head dims in whole 16-row tiles, each with its partner half a head on
    const GemvFusion::RopeKV& r = in.rk;
    return p.y_dtype == DType::BF16 && !p.accumulate && p.ldy >= p.w.N && r.head_dim > 0 && r.head_dim % 32 == 0 &&
           r.n_q % r.head_dim == 0 && r.n_k > 0 && r.n_k % r.head_dim == 0 && p.w.N == r.n_q + 2 * r.n_k && r.cos &&
           r.sin && r.k_cache && r.v_cache && r.slots;
  }
  return (p.y_dtype == DType::BF16 || p.y_dtype == DType::F32) && p.ldy >= p.w.N;
}

cudaError_t gemv_int(const IntGemmParams& p, cudaStream_t stream, const GemvFusion& in) {
  if (p.M > 8) return cudaErrorInvalidValue;
  if (in.kind == GemvFusion::kPlain && !in.swiglu && !in.rope) {
    if (!gemm_int_supported(p)) return cudaErrorInvalidValue;
    return launch_int<1, 1, 1, 0, kStore>(p, in, stream);
  }
  if (!gemv_int_fusable(p, in)) return cudaErrorInvalidValue;
  auto go = [&](auto mr) -> cudaError_t {
    constexpr int MR = decltype(mr)::value;
    if (in.rope) return launch_int<1, 1, 2, MR, kRopeKV>(p, in, stream);
    if (in.swiglu) return launch_int<1, 1, 1, MR, kSwiGLU>(p, in, stream);
    return launch_int<1, 1, 1, MR, kStore>(p, in, stream);
  };
  switch (p.M) {
    case 1: return go(std::integral_constant<int, 1>{});
    case 2: return go(std::integral_constant<int, 2>{});
    case 3: return go(std::integral_constant<int, 3>{});
    default: return go(std::integral_constant<int, 4>{});
  }
}

cudaError_t dequantize_int(const IntMatrix& w, int64_t r0, int64_t n, void* dst, int64_t ld, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!valid_matrix(w) || r0 < 0 || r0 + n > w.N || ld < w.K) return cudaErrorInvalidValue;
  const int64_t total = n * w.K;
  return launch(dequantize_int_kernel, dim3(unsigned((total + 255) / 256)), dim3(256), 0, stream, w, r0, n,
                static_cast<__nv_bfloat16*>(dst), ld);
}

cudaError_t gather_cols(const void* src, int64_t lds, const int32_t* perm, void* dst, int64_t ldd, int64_t M, int64_t K,
                        cudaStream_t stream) {
  if (M <= 0 || K <= 0) return cudaSuccess;
  if (M > 65535 || lds < K || ldd < K || !perm) return cudaErrorInvalidValue;
  const unsigned bx = unsigned(std::min<int64_t>((K + 255) / 256, 64));
  return launch(gather_cols_kernel, dim3(bx, unsigned(M)), dim3(256), 0, stream, static_cast<const __nv_bfloat16*>(src),
                lds, perm, static_cast<__nv_bfloat16*>(dst), ldd, K);
}

namespace {
// The fallback's piece of dequantized rows: at most 64 MiB, whole 128-row blocks.
int64_t fallback_rows(int64_t N, int64_t ldd) {
  return std::min(N, std::max<int64_t>(128, (int64_t(64) << 20) / (ldd * 2) / 128 * 128));
}
}  // namespace

size_t gemm_int_scratch_bytes(const IntMatrix& w) {
  const int64_t ldd = (w.K + 7) / 8 * 8;
  return size_t(fallback_rows(w.N, ldd) * ldd) * 2;
}

cudaError_t gemm_int(GemmContext* ctx, const IntGemmParams& p, cudaStream_t stream, int64_t kernel_max_m,
                     IntGemmTile tile) {
  if (p.M <= 0) return cudaSuccess;
  if (!valid_matrix(p.w) || (p.y_dtype != DType::BF16 && p.y_dtype != DType::F32) || p.ldx < p.w.K ||
      p.ldy < p.w.N)
    return cudaErrorInvalidValue;
  if (gemm_int_supported(p) && (p.M <= 8 || p.M <= kernel_max_m)) {
    if (p.M <= 8 && tile.nt == 0) return gemv_int(p, stream);
    // Each block reads its tokens' x from L2 once per K slice (its other warp groups find it in
    // L1) and each weight tile once: more tokens per block (nt) and more rows per block (rt·wt)
    // cut the x reads (at M = 64, N = K = 4096: 64 MB from L2 with 32 rows a block, 32 MB with
    // 64, against 8 MB of INT4 codes), fewer blocks leave SMs idle. A guess until the bench
    // (int_gemm_test's DISABLED_BenchLlama3Shapes) has timed every tiling on the H100: 16 tokens
    // and 32 rows for M <= 16, else 32 tokens and 64 rows in 4 warp groups (126 registers, two
    // blocks an SM; wt 2 shares x in registers but takes 232).
    if (tile.nt == 0) tile = p.M <= 16 ? IntGemmTile{2, 2, 1} : IntGemmTile{4, 4, 1};
    const auto is = [&](int nt, int rt, int wt) { return tile.nt == nt && tile.rt == rt && tile.wt == wt; };
    if (is(2, 2, 1)) return launch_int<2, 2, 1, 0, kStore>(p, {}, stream);
    if (is(4, 2, 1)) return launch_int<4, 2, 1, 0, kStore>(p, {}, stream);
    if (is(4, 2, 2)) return launch_int<4, 2, 2, 0, kStore>(p, {}, stream);
    if (is(4, 4, 1)) return launch_int<4, 4, 1, 0, kStore>(p, {}, stream);
    return cudaErrorInvalidValue;
  }
  // W's rows dequantized to bf16 a piece at a time (at most 64 MiB, whole 128-row blocks), each
  // piece one bf16 product into its columns of y (as gemm_fp8's fallback).
  const int64_t N = p.w.N, K = p.w.K, ldd = (K + 7) / 8 * 8, rows = fallback_rows(N, ldd);
  void* scratch = nullptr;
  GALE_CUDA_TRY(gemm_scratch(ctx, gemm_int_scratch_bytes(p.w), &scratch));
  const size_t ysz = p.y_dtype == DType::F32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    GALE_CUDA_TRY(dequantize_int(p.w, r0, n, scratch, ldd, stream));
    GemmParams q{p.x, p.ldx, scratch, ldd, static_cast<uint8_t*>(p.y) + size_t(r0) * ysz, p.ldy, p.y_dtype, p.M, n, K,
                 p.accumulate};
    GALE_CUDA_TRY(gemm_bf16(ctx, q, stream));
  }
  return cudaSuccess;
}

}  // namespace gale::cuda
