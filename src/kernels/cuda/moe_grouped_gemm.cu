// The grouped GEMM: one templated tensor-core kernel (mma.sync m16n8k16 bf16 -> f32, ldmatrix
// from XOR-swizzled shared tiles, a cp.async pipeline of STAGES k-tiles) in three tile shapes:
// 16 x 64 for decode (1-2 rows per expert: the product is a stream over the chosen experts'
// weights, and a 16-row tile wastes MMA work that is free there), 64 x 128 and 128 x 128 for
// prefill chunks.
#include <algorithm>
#include <climits>

#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/moe_grouped_gemm.cuh"

namespace gale::cuda {

namespace {

template <int TM_, int TN_, int TK_, int WM_, int WN_, int STAGES_>
struct Tile {
  static constexpr int TM = TM_, TN = TN_, TK = TK_, WM = WM_, WN = WN_, STAGES = STAGES_;
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int kWarpM = TM / WM, kWarpN = TN / WN;
  static constexpr int kMI = kWarpM / 16, kNI = kWarpN / 8;
  static constexpr int kChunks = TK / 8;  // 16-byte chunks in a tile row
  static constexpr int kAChunks = TM * kChunks / kThreads, kBChunks = TN * kChunks / kThreads;
  static constexpr int kStageBytes = (TM + TN) * TK * 2;
  static constexpr int kSmem = kStageBytes * STAGES;
  static_assert(TK == 32 || TK == 64, "swizzle below is for 64- and 128-byte rows");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tile of whole m16 x (2 x n8) fragments");
  static_assert(TM * kChunks % kThreads == 0 && TN * kChunks % kThreads == 0, "whole chunks per thread");
  // Byte offset of 16-byte chunk c of tile row r. XOR swizzle: the 8 rows one ldmatrix reads
  // (same logical chunk) land in 8 different 16-byte bank groups.
  __device__ static uint32_t off(int r, int c) {
    constexpr int shift = kChunks == 8 ? 0 : 1;
    return uint32_t(r * TK * 2 + ((c ^ ((r >> shift) & (kChunks - 1))) << 4));
  }
};

using SmallTile = Tile<16, 64, 64, 1, 4, 4>;    // 40 KB shared
using MediumTile = Tile<64, 128, 64, 2, 4, 3>;  // 72 KB
using LargeTile = Tile<128, 128, 64, 2, 4, 3>;  // 96 KB

// Grid: (column tiles of N, row-tile slots). Each CTA first finds its (expert, row tile).
template <class C>
__global__ void __launch_bounds__(C::kThreads) grouped_gemm_kernel(GroupedGemmParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int s_e, s_r0, s_r1;
  pdl_launch_dependents();
  pdl_wait();  // the offsets (and x_rows, x) come from the kernels before
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (warp == 0) {
    // Row tiles in expert order: expert e's tiles start after sum_{e' < e} ceil(count / TM).
    const int tile = int(blockIdx.y), E = int(p.n_experts);
    int run = 0, fe = -1, fr0 = 0, fr1 = 0;
    for (int e0 = 0; e0 < E && run <= tile; e0 += 32) {
      const int e = e0 + lane;
      int lo = 0, hi = 0;
      if (e < E) {
        lo = p.offsets[e];
        hi = p.offsets[e + 1];
      }
      const int nt = (hi - lo + C::TM - 1) / C::TM;
      int inc = nt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += u;
      }
      const int start = run + inc - nt;
      if (nt > 0 && tile >= start && tile < start + nt) {
        fe = e;
        fr0 = lo + (tile - start) * C::TM;
        fr1 = hi;
      }
      run += __shfl_sync(0xffffffffu, inc, 31);
    }
    const unsigned who = __ballot_sync(0xffffffffu, fe >= 0);
    if (who == 0) {
      if (lane == 0) s_e = -1;
    } else if (lane == __ffs(who) - 1) {
      s_e = fe;
      s_r0 = fr0;
      s_r1 = fr1;
    }
  }
  __syncthreads();
  const int e = s_e;
  if (e < 0) return;  // past the last tile
  const int r0 = s_r0, r_end = min(s_r1, r0 + C::TM);
  const int64_t n0 = int64_t(blockIdx.x) * C::TN;
  const __nv_bfloat16* X = static_cast<const __nv_bfloat16*>(p.x);
  const __nv_bfloat16* W = static_cast<const __nv_bfloat16*>(p.w[e]);

  // This thread's chunks of the A and B tiles (rows fixed over the k loop).
  const __nv_bfloat16* a_src[C::kAChunks];
  bool a_ok[C::kAChunks];
  uint32_t a_dst[C::kAChunks];
  int a_col[C::kAChunks];
#pragma unroll
  for (int i = 0; i < C::kAChunks; ++i) {
    const int chunk = tid + i * C::kThreads, r = chunk / C::kChunks, c = chunk % C::kChunks;
    const int row = r0 + r;
    a_ok[i] = row < r_end;
    const int64_t xr = a_ok[i] ? (p.x_rows ? int64_t(p.x_rows[row]) : int64_t(row)) : 0;
    a_src[i] = X + xr * p.ldx + c * 8;
    a_dst[i] = C::off(r, c);
    a_col[i] = c * 8;
  }
  const __nv_bfloat16* b_src[C::kBChunks];
  bool b_ok[C::kBChunks];
  uint32_t b_dst[C::kBChunks];
  int b_col[C::kBChunks];
#pragma unroll
  for (int i = 0; i < C::kBChunks; ++i) {
    const int chunk = tid + i * C::kThreads, r = chunk / C::kChunks, c = chunk % C::kChunks;
    const int64_t n = n0 + r;
    b_ok[i] = n < p.N;
    b_src[i] = W + (b_ok[i] ? n : 0) * p.ldw + c * 8;
    b_dst[i] = uint32_t(C::TM * C::TK * 2) + C::off(r, c);
    b_col[i] = c * 8;
  }
  const uint32_t sbase = smem_addr(smem);
  const int KT = int((p.K + C::TK - 1) / C::TK);
  auto load_stage = [&](int s, int kt) {
    const int k0 = kt * C::TK;
    const uint32_t base = sbase + uint32_t(s * C::kStageBytes);
#pragma unroll
    for (int i = 0; i < C::kAChunks; ++i) {
      const bool ok = a_ok[i] && k0 + a_col[i] < p.K;
      cp_async16(base + a_dst[i], ok ? a_src[i] + k0 : X, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < C::kBChunks; ++i) {
      const bool ok = b_ok[i] && k0 + b_col[i] < p.K;
      cp_async16(base + b_dst[i], ok ? b_src[i] + k0 : W, ok ? 16 : 0);
    }
  };

  float acc[C::kMI][C::kNI][4];
#pragma unroll
  for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::kNI; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;

#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }
  const int wm = warp / C::WN, wn = warp % C::WN;
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<C::STAGES - 2>();
    __syncthreads();  // stage kt landed for everyone; stage kt - 1 is free to refill
    if (kt + C::STAGES - 1 < KT) load_stage((kt + C::STAGES - 1) % C::STAGES, kt + C::STAGES - 1);
    cp_async_commit();
    const uint32_t a_base = sbase + uint32_t((kt % C::STAGES) * C::kStageBytes);
    const uint32_t b_base = a_base + uint32_t(C::TM * C::TK * 2);
#pragma unroll
    for (int ks = 0; ks < C::TK / 16; ++ks) {
      uint32_t a[C::kMI][4], b[C::kNI][2];
#pragma unroll
      for (int mi = 0; mi < C::kMI; ++mi) {
        const int r = wm * C::kWarpM + mi * 16 + (lane & 15), c = ks * 2 + (lane >> 4);
        ldmatrix_x4(a_base + C::off(r, c), a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
      }
#pragma unroll
      for (int nj = 0; nj < C::kNI / 2; ++nj) {
        const int r = wn * C::kWarpN + nj * 16 + (lane & 7) + ((lane >> 4) << 3), c = ks * 2 + ((lane >> 3) & 1);
        ldmatrix_x4(b_base + C::off(r, c), b[2 * nj][0], b[2 * nj][1], b[2 * nj + 1][0], b[2 * nj + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < C::kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::kNI; ++ni) mma_bf16(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();

  __nv_bfloat16* Y = static_cast<__nv_bfloat16*>(p.y);
#pragma unroll
  for (int mi = 0; mi < C::kMI; ++mi) {
    const int row = r0 + wm * C::kWarpM + mi * 16 + (lane >> 2);
#pragma unroll
    for (int ni = 0; ni < C::kNI; ++ni) {
      const int64_t col = n0 + wn * C::kWarpN + ni * 8 + (lane & 3) * 2;
      if (col >= p.N) continue;  // N % 8 == 0: col + 1 < N too
      if (row < r_end)
        *reinterpret_cast<__nv_bfloat162*>(Y + int64_t(row) * p.ldy + col) =
            __floats2bfloat162_rn(acc[mi][ni][0], acc[mi][ni][1]);
      if (row + 8 < r_end)
        *reinterpret_cast<__nv_bfloat162*>(Y + int64_t(row + 8) * p.ldy + col) =
            __floats2bfloat162_rn(acc[mi][ni][2], acc[mi][ni][3]);
    }
  }
}

template <class C>
cudaError_t set_smem() {
  return cudaFuncSetAttribute(grouped_gemm_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
}

template <class C>
cudaError_t run(const GroupedGemmParams& p, cudaStream_t stream) {
  // Row tiles: ceil(count_e / TM) summed over experts <= ceil(rows / TM) + (experts with rows),
  // and never more than the rows themselves.
  const int64_t E = p.n_experts, R = p.max_rows;
  const int64_t tiles = std::min(R, (R + C::TM - 1) / C::TM + std::min(E, R));
  if (tiles > 65535) return cudaErrorInvalidValue;
  const dim3 grid(unsigned((p.N + C::TN - 1) / C::TN), unsigned(tiles));
  GALE_CUDA_TRY(launch(grouped_gemm_kernel<C>, grid, C::kThreads, C::kSmem, stream, p));
  return cudaGetLastError();
}

}  // namespace

cudaError_t moe_grouped_gemm_init() {
  static const cudaError_t status = [] {
    for (cudaError_t e : {set_smem<SmallTile>(), set_smem<MediumTile>(), set_smem<LargeTile>()})
      if (e != cudaSuccess) return e;
    return cudaSuccess;
  }();
  return status;
}

bool moe_grouped_gemm_supported(const GroupedGemmParams& p) {
  const auto a16 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
  return p.n_experts >= 1 && p.max_rows >= 0 && p.max_rows <= INT_MAX / 2 && p.N > 0 && p.K > 0 && p.N % 8 == 0 &&
         p.K % 8 == 0 && p.ldx % 8 == 0 && p.ldw % 8 == 0 && p.ldy % 8 == 0 && a16(p.x) && a16(p.y) && p.w &&
         p.offsets;
}

cudaError_t moe_grouped_gemm(const GroupedGemmParams& p, cudaStream_t stream) {
  if (p.max_rows <= 0) return cudaSuccess;
  if (!moe_grouped_gemm_supported(p)) return cudaErrorInvalidValue;
  GALE_CUDA_TRY(moe_grouped_gemm_init());
  const int64_t per_expert = p.rows_hint > 0 ? p.rows_hint : (p.max_rows + p.n_experts - 1) / p.n_experts;
  if (per_expert <= 16) return run<SmallTile>(p, stream);
  if (per_expert <= 96) return run<MediumTile>(p, stream);
  return run<LargeTile>(p, stream);
}

}  // namespace gale::cuda
