#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/silu_mul.cuh"

#include <cuda_fp8.h>

#include <type_traits>

namespace gale::cuda {

namespace {

constexpr int kWarps = 8;          // output features per block
constexpr int kFuseMaxRows = 4;
constexpr int kFuseMaxBytes = 32 * 1024;
enum Epilogue { kStore, kSwiGLU, kRopeKV };  // what happens to the dot products (GemvFusion)

__device__ __forceinline__ void dot8(const uint4& w, const uint4& x, float& acc) {
  const __nv_bfloat162* wh = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* xh = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wh[i]), b = __bfloat1622float2(xh[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

// Widens 16 E4M3 weights (one 16-byte load) to f32: the hardware's e4m3x2 -> f16x2 conversion,
// then f16 -> f32 (exact: every E4M3 value is an f16).
__device__ __forceinline__ void widen16_e4m3(const uint4& w, float (&f)[16]) {
  const uint32_t* wv = reinterpret_cast<const uint32_t*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(wv[i] >> (16 * j)), __NV_E4M3);
      const float2 v = __half22float2(__half2(h));
      f[4 * i + 2 * j] = v.x;
      f[4 * i + 2 * j + 1] = v.y;
    }
}

// Sum over 16 widened weights times x[16] (two 16-byte loads of bf16).
__device__ __forceinline__ float dot16(const float (&wf)[16], const uint4& x0, const uint4& x1) {
  const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(&x0);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&x1);
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 u = __bfloat1622float2(a[i]), v = __bfloat1622float2(b[i]);
    acc = fmaf(wf[2 * i], u.x, acc);
    acc = fmaf(wf[2 * i + 1], u.y, acc);
    acc = fmaf(wf[8 + 2 * i], v.x, acc);
    acc = fmaf(wf[8 + 2 * i + 1], v.y, acc);
  }
  return acc;
}

// Writes the M normalized input rows into shared memory xs[M][K] (bf16).
template <int M>
__device__ void stage_rmsnorm(const GemmParams& p, const GemvFusion& in, __nv_bfloat16* xs) {
  const int chunks = int(p.K / 8);
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
    inv[threadIdx.x] = rsqrtf(t / float(p.K) + in.eps);
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
      store8(xs + m * p.K + 8 * c, v);
    }
  }
  __syncthreads();
}

// kUnroll: 16-byte W loads in flight per lane. F8: W is E4M3 (16 weights a load) with p's scale
// grid; SK: its scale changes along a row (groups or blocks of ws_cols columns, applied to each
// 16-weight chunk's partial sum), else one scale per row, applied to the finished sum.
template <int M, int kUnroll, int OP, int EPI, bool F8, bool SK>
__global__ void __launch_bounds__(kWarps * 32) gemv_bf16_kernel(GemmParams p, GemvFusion in, int rotate) {
  pdl_launch_dependents();
  extern __shared__ uint4 staged[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t n = int64_t(blockIdx.x) * kWarps + warp;
  // RoPE output: a block of q or k features takes dims i..i+3 of one head (warps 0-3) and their
  // rotation partners i+half..i+half+3 (warps 4-7), so each pair meets in the block.
  const int64_t first = int64_t(blockIdx.x) * kWarps;
  const bool rotated = EPI == kRopeKV && first < in.rk.n_q + in.rk.n_k;
  const int64_t head0 = rotated ? first / in.rk.head_dim * in.rk.head_dim : 0;
  const int64_t dim0 = (first - head0) / 2;  // i: blocks step by 8 features, 4 of each half
  if (rotated) n = head0 + dim0 + (warp < 4 ? warp : in.rk.head_dim / 2 + warp - 4);
  const bool active = n < p.N;
  // Staging needs every thread of the block at its barriers, so inactive warps (past N) stay.
  if (!active && OP == GemvFusion::kPlain) return;
  constexpr int kPer = F8 ? 16 : 8;  // weights per 16-byte chunk
  const int64_t wrow = active ? n : 0;
  const uint4* w = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.w) + wrow * p.ldw * (F8 ? 1 : 2));
  const float* srow = F8 ? p.w_scale + wrow / p.ws_rows * p.ws_ld : nullptr;
  const int chunks = int(p.K / kPer);  // 16-byte chunks per row
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  // The row goes in pieces of kUnroll loads per lane; with `rotate` each row starts at a
  // different piece, so that rows streamed side by side do not hit the same offsets together.
  const int pieces = chunks / (32 * kUnroll);
  const int rot = rotate && pieces > 1 ? int(n % pieces) : 0;
  const auto piece = [&](int it) {
    const int q = it + rot;
    return lane + 32 * kUnroll * (q >= pieces ? q - pieces : q);
  };
  // The first loads of W (never written by a kernel) go out before the wait for x: with PDL
  // they overlap the previous kernel's tail.
  uint4 wr[kUnroll];
  if (active && pieces > 0) {
    const int c0 = piece(0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wr[u] = __ldcs(w + c0 + 32 * u);
  }
  pdl_wait();
  const uint4* xv[M];
  if constexpr (OP == GemvFusion::kPlain) {
#pragma unroll
    for (int m = 0; m < M; ++m) xv[m] = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.x) + m * p.ldx);
  } else {
    __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(staged);
    stage_rmsnorm<M>(p, in, xs);
    if (!active) return;
#pragma unroll
    for (int m = 0; m < M; ++m) xv[m] = reinterpret_cast<const uint4*>(xs + m * p.K);
  }
  const auto ldx = [&](int m, int i) {
    if constexpr (OP == GemvFusion::kPlain) return __ldg(xv[m] + i);
    else return xv[m][i];
  };
  // One 16-byte chunk c of W times the M rows of x.
  const auto chunk = [&](const uint4& wv, int c) {
    if constexpr (!F8) {
#pragma unroll
      for (int m = 0; m < M; ++m) dot8(wv, ldx(m, c), acc[m]);
    } else {
      float wf[16];
      widen16_e4m3(wv, wf);  // once for all M rows
      const float sc = SK ? __ldg(srow + int64_t(c) * 16 / p.ws_cols) : 1.0f;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float part = dot16(wf, ldx(m, 2 * c), ldx(m, 2 * c + 1));
        acc[m] = SK ? fmaf(part, sc, acc[m]) : acc[m] + part;
      }
    }
  };
  // Main loop: kUnroll loads of W in flight before the first use (W is read once: no L1).
  for (int it = 0; it < pieces; ++it) {
    const int c = piece(it);
    if (it > 0) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wr[u] = __ldcs(w + c + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) chunk(wr[u], c + 32 * u);
  }
  for (int c = lane + 32 * kUnroll * pieces; c < chunks; c += 32) chunk(__ldcs(w + c), c);
  if constexpr (F8 && !SK) {
    if (active) {
      const float sc = __ldg(srow);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] *= sc;
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
  if constexpr (EPI == kSwiGLU) {  // warps 0-3 hold gate features 4b+w, warps 4-7 the matching up ones
    __shared__ float ex[kWarps][M];
    if (lane == 0)
#pragma unroll
      for (int m = 0; m < M; ++m) ex[warp][m] = acc[m];
    __syncthreads();
    if (warp < kWarps / 2 && lane < M) {
      const float g = __bfloat162float(__float2bfloat16_rn(ex[warp][lane]));
      const float u = __bfloat162float(__float2bfloat16_rn(ex[warp + kWarps / 2][lane]));
      static_cast<__nv_bfloat16*>(p.y)[int64_t(lane) * p.ldy + int64_t(blockIdx.x) * (kWarps / 2) + warp] =
          __float2bfloat16_rn(silu_times(g, u));
    }
    return;
  }
  if constexpr (EPI == kRopeKV) {  // as stored by a plain GEMV (bf16), then rope_kv_write's steps
    static_assert(kWarps == 8, "the RoPE pairing puts 4 dims and their partners in one block");
    __shared__ float ex[kWarps][M];
    if (lane == 0)
#pragma unroll
      for (int m = 0; m < M; ++m) ex[warp][m] = __bfloat162float(__float2bfloat16_rn(acc[m]));
    __syncthreads();
    const GemvFusion::RopeKV& r = in.rk;
    __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y);
    const int64_t row = r.n_k;  // one cache row: the kv heads of one token
    if (lane >= M) return;
    const int m = lane;
    const int32_t slot = r.slots[m];
    if (rotated) {
      if (warp >= 4) return;
      const int64_t half = r.head_dim / 2, i = dim0 + warp;
      const float2 v = rope_rotate(ex[warp][m], ex[warp + 4][m], r.cos[m * half + i], r.sin[m * half + i]);
      const __nv_bfloat16 lo = __float2bfloat16_rn(v.x), hi = __float2bfloat16_rn(v.y);
      y[int64_t(m) * p.ldy + head0 + i] = lo;
      y[int64_t(m) * p.ldy + head0 + i + half] = hi;
      if (head0 >= r.n_q && slot >= 0) {
        __nv_bfloat16* k = static_cast<__nv_bfloat16*>(r.k_cache) + int64_t(slot) * row + (head0 - r.n_q);
        k[i] = lo;
        k[i + half] = hi;
      }
    } else {
      const __nv_bfloat16 v = __float2bfloat16_rn(ex[warp][m]);
      y[int64_t(m) * p.ldy + n] = v;
      if (slot >= 0) static_cast<__nv_bfloat16*>(r.v_cache)[int64_t(slot) * row + (n - r.n_q - r.n_k)] = v;
    }
    return;
  }
  if (lane < M) {
    float v = 0.0f;
#pragma unroll
    for (int m = 0; m < M; ++m)
      if (m == lane) v = acc[m];
    const int64_t i = int64_t(lane) * p.ldy + n;
    if (p.accumulate) v += load_f32(p.y, p.y_dtype, i);
    store_f32(p.y, p.y_dtype, i, v);
  }
}

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; }

}  // namespace

bool gemv_bf16_supported(const GemmParams& p) {
  const bool f8 = p.w_dtype == DType::F8_E4M3;
  if (!f8 && p.w_dtype != DType::BF16) return false;
  // FP8: a scale per row or per whole 16-weight chunks along it.
  if (f8 && (!p.w_scale || p.ws_rows < 1 || p.ws_cols < 1 || p.ws_ld < 1 || (p.ws_cols < p.K && p.ws_cols % 16)))
    return false;
  const int64_t per = f8 ? 16 : 8;  // weights per 16-byte load
  return p.M >= 1 && p.M <= 8 && p.K % per == 0 && p.ldx % 8 == 0 && p.ldw % per == 0 && aligned16(p.x) &&
         aligned16(p.w) && (p.y_dtype == DType::BF16 || p.y_dtype == DType::F32);
}

bool gemv_bf16_fusable(const GemmParams& p, const GemvFusion& in) {
  if (!gemv_bf16_supported(p) || p.M > kFuseMaxRows || p.M * p.K * 2 > kFuseMaxBytes) return false;
  if (in.swiglu && (in.rope || p.N % kWarps || p.y_dtype != DType::BF16 || p.accumulate || p.ldy < p.N / 2))
    return false;
  if (in.rope) {
    const GemvFusion::RopeKV& r = in.rk;
    if (p.N % kWarps || p.y_dtype != DType::BF16 || p.accumulate || p.ldy < p.N || r.head_dim <= 0 ||
        r.head_dim % 8 || r.n_q % r.head_dim || r.n_k <= 0 || r.n_k % r.head_dim || p.N != r.n_q + 2 * r.n_k ||
        !r.cos || !r.sin || !r.k_cache || !r.v_cache || !r.slots)
      return false;
  }
  return in.kind == GemvFusion::kRMSNorm && in.norm_weight && aligned16(in.norm_weight);
}

cudaError_t gemv_bf16(const GemmParams& p, cudaStream_t stream, const GemvFusion& in) {
  if (p.N <= 0) return cudaSuccess;
  if (!gemv_bf16_supported(p) || (!in.swiglu && p.ldy < p.N)) return cudaErrorInvalidValue;
  if ((in.kind != GemvFusion::kPlain || in.swiglu || in.rope) && !gemv_bf16_fusable(p, in)) return cudaErrorInvalidValue;
  const unsigned grid = unsigned((p.N + kWarps - 1) / kWarps);
  // 8 loads in flight per lane for the narrower products (q|k|v, o, down of an 8B model), 4 for
  // the wide ones (gate|up, LM head): 173.1 vs 172.9 tok/s (8 everywhere: 173.2, 4: 172.9) at
  // batch 1, synthetic:llama3-8b, H100, 2026-11-26, and 176.3 vs 175.7 with the RMSNorm-staging
  // q|k|v product at 8 too. GALE_GEMV_UNROLL=4|8 forces one depth. (Blocks of 2 or 4 warps
  // instead of 8 measured the same: 174.9 / 175.2 / 175.7. Prefetching up to 16 KB of each row
  // into L2 before the PDL wait measured much slower: 159.9 vs 176.1. Later, the same card:
  // 16 loads in flight for K = 4,096 175.4 vs 179.8; x copied into shared memory for o and
  // down 179.5 vs 180.5 without. Rows starting at rotated pieces: 180.2 vs 179.3 over two
  // calls, on by default, GALE_GEMV_ROTATE=0 off.)
  const KernelSwitches sw = kernel_switches();
  const int rotate = sw.gemv_rotate ? 1 : 0;  // KernelSwitches::gemv_rotate (GALE_GEMV_ROTATE)
  const bool deep = sw.gemv_unroll == 8 || (sw.gemv_unroll == 0 && p.N <= 8192);
  auto go = [&](auto m) -> cudaError_t {
    constexpr int M = decltype(m)::value;
    auto with = [&](auto op, auto epi, size_t smem) -> cudaError_t {
      constexpr int OP = decltype(op)::value, EPI = decltype(epi)::value;
      auto weights = [&](auto f8, auto sk) -> cudaError_t {
        constexpr bool F8 = decltype(f8)::value, SK = decltype(sk)::value;
        if (deep) return launch(gemv_bf16_kernel<M, 8, OP, EPI, F8, SK>, grid, kWarps * 32, smem, stream, p, in, rotate);
        return launch(gemv_bf16_kernel<M, 4, OP, EPI, F8, SK>, grid, kWarps * 32, smem, stream, p, in, rotate);
      };
      using T = std::true_type;
      using F = std::false_type;
      if (p.w_dtype != DType::F8_E4M3) return weights(F{}, F{});
      return p.ws_cols < p.K ? weights(T{}, T{}) : weights(T{}, F{});
    };
    using Plain = std::integral_constant<int, GemvFusion::kPlain>;
    using Norm = std::integral_constant<int, GemvFusion::kRMSNorm>;
    if (in.kind == GemvFusion::kPlain) return with(Plain{}, std::integral_constant<int, kStore>{}, 0);
    if constexpr (M <= kFuseMaxRows) {
      const size_t smem = size_t(p.M * p.K) * 2;
      if (in.swiglu) return with(Norm{}, std::integral_constant<int, kSwiGLU>{}, smem);
      if (in.rope) return with(Norm{}, std::integral_constant<int, kRopeKV>{}, smem);
      return with(Norm{}, std::integral_constant<int, kStore>{}, smem);
    }
    return cudaErrorInvalidValue;
  };
  switch (p.M) {
    case 1: return go(std::integral_constant<int, 1>{});
    case 2: return go(std::integral_constant<int, 2>{});
    case 3: return go(std::integral_constant<int, 3>{});
    case 4: return go(std::integral_constant<int, 4>{});
    case 5: return go(std::integral_constant<int, 5>{});
    case 6: return go(std::integral_constant<int, 6>{});
    case 7: return go(std::integral_constant<int, 7>{});
    default: return go(std::integral_constant<int, 8>{});
  }
}

}  // namespace gale::cuda
