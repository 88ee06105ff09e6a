// The integer-weight products (kernels/cuda/gemm_int.cuh) against f32 references computed on the
// host from int_weight() (model/int_quantize.h: the definition of a weight's value), with the
// weights made by quantize_int and put in the device layout by int_pack: the decode GEMV (plain,
// RMSNorm input, SwiGLU output), the tensor-core GEMM for larger M, the dequantize-then-cuBLASLt
// fallback, the column gather of act-order weights. INT8 and INT4, per channel and groups of
// 32 / 64 / 96 / 128, zero points on and off, odd N and K, padded strides. CudaIntLayout runs without a
// GPU: the kernel's unpacking and the tensor core's fragment layouts emulated on the host.
// The whole bundled model with every projection quantized by quantize_int: integer weights kept
// on the device against the same weights dequantized to bf16 at upload (GALE_CUDA_INT=0's
// path), prefill through the GEMM kernel and its fallback, decode through the fused GEMVs.
// DISABLED_Bench* time the kernels on Llama-3-8B's shapes against the bf16 ones
// (--gtest_also_run_disabled_tests --gtest_filter='*Bench*').
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "gpu_test_util.h"
#include "kernels/cuda/gemm_int.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/rope_kv_write.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "model/int_quantize.h"
#ifdef GALE_FIXTURES_DIR
#include <fstream>
#include <map>
#include <sstream>

#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/backend_factory.h"
#include "model/kv_cache.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"
#endif

namespace gale {
namespace {

using namespace gale::test;

// A quantized [N, K] matrix on the host (codes rows of ld values, ld >= K) and its copy in the
// device layout.
struct IntW {
  IntQuantSpec spec;
  int64_t N = 0, K = 0, ld = 0;
  std::vector<uint8_t> codes;   // [N][ld] (INT8) or [N][ld / 2] (INT4)
  std::vector<float> scales;    // [N][spr]
  std::vector<uint8_t> zeros;   // [N][spr] or empty
  std::vector<float> dense;     // [N][K] int_weight()
  std::unique_ptr<DevBuf> dcodes, dscales, dzeros;
  cuda::IntMatrix dev;
};

// Random weights (a few rows of outliers, so scales differ a lot) quantized by quantize_int; the
// row padding of the codes is filled with 0x5A, which must never be read.
IntW make_int(std::mt19937& g, int64_t N, int64_t K, int64_t pad, const IntQuantSpec& spec, bool with_dense = true) {
  IntW w;
  w.spec = spec;
  w.N = N;
  w.K = K;
  w.ld = K + pad;
  std::vector<float> src = randn(size_t(N * K), g, 0.02f);
  for (int64_t r = 0; r < N; r += 37) src[size_t(r * K + (r * 13) % K)] = 0.5f;
  const int64_t bpr = int_code_bytes_per_row(spec, K), spr = int_scales_per_row(spec, K);
  std::vector<uint8_t> packed(size_t(N * bpr));
  w.scales.resize(size_t(N * spr));
  if (!spec.symmetric) w.zeros.resize(size_t(N * spr));
  quantize_int(src.data(), DType::F32, N, K, K, spec, nullptr, packed.data(), w.scales.data(),
               spec.symmetric ? nullptr : w.zeros.data());
  if (with_dense) w.dense.resize(size_t(N * K));
  for (int64_t r = 0; r < N && with_dense; ++r)
    for (int64_t c = 0; c < K; ++c)
      w.dense[size_t(r * K + c)] =
          int_weight(packed.data(), w.scales.data(), spec.symmetric ? nullptr : w.zeros.data(), spec, K, r, c);
  // Rows of ld values (the padding is garbage).
  const int64_t bld = spec.bits == 8 ? w.ld : w.ld / 2;
  w.codes.assign(size_t(N * bld), 0x5A);
  for (int64_t r = 0; r < N; ++r) std::copy_n(packed.data() + r * bpr, bpr, w.codes.data() + r * bld);
  // The device layout.
  const int64_t group = spec.group;
  std::vector<uint8_t> tiles(cuda::int_code_bytes(spec.bits, N, K), 0);
  std::vector<float> ts(cuda::int_scale_count(N, K, group), 0.0f);
  std::vector<uint8_t> tz(spec.symmetric ? 0 : ts.size(), 0);
  cuda::IntHostMatrix h;
  h.codes = w.codes.data();
  h.ld = w.ld;
  h.scale = w.scales.data();
  h.scale_ld = spr;
  h.zero = spec.symmetric ? nullptr : w.zeros.data();
  h.bits = spec.bits;
  h.group = group;
  h.rows = N;
  h.cols = K;
  cuda::int_pack(h, N, nullptr, nullptr, tiles.data(), ts.data(), spec.symmetric ? nullptr : tz.data());
  w.dcodes = std::make_unique<DevBuf>(to_device(tiles));
  w.dscales = std::make_unique<DevBuf>(to_device(ts));
  if (!spec.symmetric) w.dzeros = std::make_unique<DevBuf>(to_device(tz));
  w.dev.w = w.dcodes->p;
  w.dev.scale = w.dscales->as<float>();
  w.dev.zero = spec.symmetric ? nullptr : w.dzeros->as<uint8_t>();
  w.dev.bits = spec.bits;
  w.dev.N = N;
  w.dev.K = K;
  w.dev.group = group;
  w.dev.ng = cuda::int_scales_per_row(K, group);
  return w;
}

// y (= or +=) x · denseᵀ in double.
std::vector<float> reference(const std::vector<float>& x, int64_t ldx, int64_t M, const IntW& w,
                             const std::vector<float>& y0, int64_t ldy, bool acc) {
  std::vector<float> y(size_t(M * ldy), 0.0f);
  if (acc) y = y0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < w.N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < w.K; ++k) s += double(x[size_t(m * ldx + k)]) * w.dense[size_t(n * w.K + k)];
      y[size_t(m * ldy + n)] = float(s + (acc ? double(y0[size_t(m * ldy + n)]) : 0.0));
    }
  return y;
}

std::vector<float> rows_of(const std::vector<float>& y, int64_t M, int64_t N, int64_t ldy) {
  std::vector<float> o;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) o.push_back(y[size_t(i * ldy + j)]);
  return o;
}

struct Case {
  int64_t M, N, K, pad;
  int bits;
  int64_t group;
  bool symmetric;
  DType yt;
  bool acc;
};

std::string describe(const Case& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         " pad=" + std::to_string(c.pad) + " INT" + std::to_string(c.bits) + " group " + std::to_string(c.group) +
         (c.symmetric ? " symmetric" : " zero points") + (c.yt == DType::F32 ? " f32 y" : " bf16 y") +
         (c.acc ? " accumulate" : "");
}

// The kernel multiplies exact integer codes (q − z) by bf16 x on the tensor cores and scales each
// 32-column partial sum in f32, where the reference sums f32 weights (q − z) · s in double: the
// two differ by f32 roundings only.
double tol(DType yt) { return yt == DType::F32 ? 2e-4 : 6e-3; }

void check_product(std::mt19937& g, const Case& c, double tolerance,
                   const std::function<void(const cuda::IntGemmParams&)>& launch) {
  SCOPED_TRACE(describe(c));
  const IntW w = make_int(g, c.N, c.K, c.pad, IntQuantSpec{c.bits, c.group, c.symmetric});
  const int64_t ldx = c.K + c.pad, ldy = c.N + c.pad;
  const std::vector<float> x = round_bf16(randn(size_t(c.M * ldx), g));
  std::vector<float> y0 = randn(size_t(c.M * ldy), g);
  if (c.yt == DType::BF16) y0 = round_bf16(y0);
  DevBuf dx = to_device(to_bf16(x)), dy(size_t(c.M * ldy) * dtype_size(c.yt));
  if (c.acc) upload_as(dy, y0, c.yt);
  const cuda::IntGemmParams p{dx.p, ldx, w.dev, dy.p, ldy, c.yt, c.M, c.acc};
  launch(p);
  if (testing::Test::HasFatalFailure()) return;
  CUDA_OK(cudaDeviceSynchronize());
  const auto ref = reference(x, ldx, c.M, w, y0, ldy, c.acc);
  EXPECT_LT(rel_err(rows_of(download_f32(dy, c.yt, size_t(c.M * ldy)), c.M, c.N, ldy), rows_of(ref, c.M, c.N, ldy)),
            tolerance);
}

// Every weight format the layout takes (groups of 96: not a power of two), over shapes with
// partial row tiles, partial K tiles (K % 64 == 16 or 32), a K not a multiple of the group,
// padded strides.
std::vector<Case> formats(int64_t M, DType yt, bool acc) {
  std::vector<Case> v;
  const int64_t shapes[][3] = {{4096, 4096, 0}, {777, 1040, 16}, {1000, 2080, 8}, {40, 96, 0}};
  int i = 0;
  for (const auto& s : shapes) {
    for (const int bits : {8, 4})
      for (const int64_t group : {int64_t(0), int64_t(32), int64_t(64), int64_t(96), int64_t(128)})
        for (const bool sym : {true, false}) {
          if (bits == 8 && !sym) continue;  // INT8 is symmetric only
          if (++i % 3 != 0 && s[0] == 4096) continue;  // the big shape: a third of the formats
          v.push_back(Case{M, s[0], s[1], s[2], bits, group, sym, yt, acc});
        }
  }
  return v;
}

// ---- the layout on the host (no GPU needed) -------------------------------------------------------

uint16_t bf16_bits(float f) { return f32_to_bf16(f); }
float bf16_value(uint32_t bits16) { return bf16_to_f32(uint16_t(bits16)); }

// One warp's view of a 32-column half of tile (rt, kt), as gemm_int_kernel unpacks it: the A
// operands of its two k-steps, a[ss][reg] (bf16 pairs, exact q − z), and the lane's scales.
void emulate_lane_a(const std::vector<uint8_t>& tiles, const std::vector<float>& scales,
                    const std::vector<uint8_t>& zeros, int bits, int64_t K, int64_t group, int64_t rt, int64_t kt,
                    int h, int lane, uint32_t (&a)[2][4], float (&sc)[2]) {
  const int g = lane / 4;
  const int64_t KT = cuda::int_k_tiles(bits, K), ng = cuda::int_scales_per_row(K, group),
                cols = cuda::int_tile_cols(bits);
  uint32_t w[4];
  std::memcpy(w, tiles.data() + ((rt * KT + kt) * 32 + lane) * 16, 16);
  const int64_t c0 = kt * cols + 32 * h, gi = group > 0 ? std::min(c0 / group, ng - 1) : 0;
  const auto at = [&](int row) { return size_t((rt * ng + gi) * 16 + row); };
  sc[0] = scales[at(g)];
  sc[1] = scales[at(g + 8)];
  const auto pair = [](float lo, float hi) { return uint32_t(bf16_bits(lo)) | uint32_t(bf16_bits(hi)) << 16; };
  if (bits == 4) {
    const uint32_t wg = h == 0 ? w[0] : w[2], wg8 = h == 0 ? w[1] : w[3];
    const float z0 = zeros.empty() ? 8.0f : zeros[at(g)], z1 = zeros.empty() ? 8.0f : zeros[at(g + 8)];
    for (int j = 0; j < 4; ++j) {
      const uint32_t lo = ((wg >> (4 * j)) & 0x000F000Fu) | 0x43004300u,
                     hi = ((wg8 >> (4 * j)) & 0x000F000Fu) | 0x43004300u;
      a[j / 2][(j % 2) * 2] = pair(bf16_value(lo & 0xFFFF) - (128 + z0), bf16_value(lo >> 16) - (128 + z0));
      a[j / 2][(j % 2) * 2 + 1] = pair(bf16_value(hi & 0xFFFF) - (128 + z1), bf16_value(hi >> 16) - (128 + z1));
    }
  } else {
    const auto q = [](uint32_t word, int b) { return float(int((word >> (8 * b)) & 0xFF) - 128); };
    for (int ss = 0; ss < 2; ++ss) {
      a[ss][0] = pair(q(w[ss], 0), q(w[ss], 1));
      a[ss][1] = pair(q(w[2 + ss], 0), q(w[2 + ss], 1));
      a[ss][2] = pair(q(w[ss], 2), q(w[ss], 3));
      a[ss][3] = pair(q(w[2 + ss], 2), q(w[2 + ss], 3));
    }
  }
}

// The kernel's products emulated with mma.m16n8k16's fragment layouts as the PTX ISA defines
// them (A register r: row g + 8 (r % 2), k 2t + 8 (r / 2) + {0, 1}; B register r: k 2t + 8r +
// {0, 1}, column g; D element e: row g + 8 (e / 2), column 2t + e % 2), over int_pack's tiles,
// against int_weight(): the layout and the unpacking tricks, checked without a GPU.
TEST(CudaIntLayout, HostEmulationOfTheTensorCoreFragmentsMatchesIntWeight) {
  std::mt19937 g(11);
  for (const Case& c : formats(5, DType::F32, false)) {
    if (c.N * c.K > 4'000'000) continue;  // the 4096² shape: slow on the host, nothing new
    SCOPED_TRACE(describe(c));
    const IntQuantSpec spec{c.bits, c.group, c.symmetric};
    const int64_t N = c.N, K = c.K, M = c.M, cols = cuda::int_tile_cols(c.bits);
    // int_pack as make_int runs it, without the device copies.
    std::vector<float> src = randn(size_t(N * K), g, 0.02f);
    const int64_t bpr = int_code_bytes_per_row(spec, K), spr = int_scales_per_row(spec, K);
    std::vector<uint8_t> codes(size_t(N * bpr)), zeros(size_t(N * spr));
    std::vector<float> scales(size_t(N * spr));
    quantize_int(src.data(), DType::F32, N, K, K, spec, nullptr, codes.data(), scales.data(), zeros.data());
    std::vector<uint8_t> tiles(cuda::int_code_bytes(c.bits, N, K), 0);
    std::vector<float> ts(cuda::int_scale_count(N, K, c.group), 0.0f);
    std::vector<uint8_t> tz(c.symmetric ? 0 : ts.size(), 0);
    cuda::IntHostMatrix h{
        codes.data(), K, scales.data(), spr, c.symmetric ? nullptr : zeros.data(), c.bits, c.group, N, K};
    cuda::int_pack(h, N, nullptr, nullptr, tiles.data(), ts.data(), c.symmetric ? nullptr : tz.data());
    const std::vector<float> x = round_bf16(randn(size_t(M * K), g));
    std::vector<float> got(size_t(M * N), 0.0f), want(size_t(M * N), 0.0f);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += double(x[size_t(m * K + k)]) *
               int_weight(codes.data(), scales.data(), c.symmetric ? nullptr : zeros.data(), spec, K, n, k);
        want[size_t(m * N + n)] = float(s);
      }
    for (int64_t rt = 0; rt < cuda::int_row_tiles(N); ++rt) {
      float acc[32][4] = {};
      for (int64_t kt = 0; kt < cuda::int_k_tiles(c.bits, K); ++kt)
        for (int hh = 0; hh < cols / 32; ++hh) {
          uint32_t a[32][2][4], b[32][2][2];
          float sc[32][2];
          for (int lane = 0; lane < 32; ++lane) {
            emulate_lane_a(tiles, ts, tz, c.bits, K, c.group, rt, kt, hh, lane, a[lane], sc[lane]);
            // x chunk [c, c + 8) of token g: words 0, 1 for k-step 0, words 2, 3 for k-step 1.
            const int64_t col = kt * cols + 32 * hh + 8 * (lane % 4), tok = lane / 4;
            uint16_t chunk[8] = {};
            if (tok < M && col < K)
              for (int e = 0; e < 8; ++e) chunk[e] = f32_to_bf16(x[size_t(tok * K + col + e)]);
            uint32_t words[4];
            std::memcpy(words, chunk, 16);
            for (int ss = 0; ss < 2; ++ss) b[lane][ss][0] = words[2 * ss], b[lane][ss][1] = words[2 * ss + 1];
          }
          for (int ss = 0; ss < 2; ++ss) {
            float A[16][16], B[16][8];
            for (int lane = 0; lane < 32; ++lane) {
              const int gg = lane / 4, t = lane % 4;
              for (int r = 0; r < 4; ++r)
                for (int e = 0; e < 2; ++e)
                  A[gg + 8 * (r % 2)][2 * t + 8 * (r / 2) + e] = bf16_value(a[lane][ss][r] >> (16 * e));
              for (int r = 0; r < 2; ++r)
                for (int e = 0; e < 2; ++e) B[2 * t + 8 * r + e][gg] = bf16_value(b[lane][ss][r] >> (16 * e));
            }
            for (int lane = 0; lane < 32; ++lane)
              for (int e = 0; e < 4; ++e) {
                const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + e % 2;
                double d = 0;
                for (int k = 0; k < 16; ++k) d += double(A[row][k]) * B[k][col];
                acc[lane][e] += float(d) * sc[lane][e / 2];
              }
          }
        }
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < 4; ++e) {
          const int64_t row = rt * 16 + lane / 4 + 8 * (e / 2), tok = 2 * (lane % 4) + e % 2;
          if (row < N && tok < M) got[size_t(tok * N + row)] = acc[lane][e];
        }
    }
    EXPECT_LT(rel_err(got, want), 1e-5);
  }
}

TEST(CudaIntGemm, PackedLayoutDequantizesToIntWeight) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (const Case& c : formats(1, DType::BF16, false)) {
    SCOPED_TRACE(describe(c));
    const IntW w = make_int(g, c.N, c.K, c.pad, IntQuantSpec{c.bits, c.group, c.symmetric});
    // Rows from 3 on (not a tile boundary), into rows of K + 5 values.
    const int64_t r0 = std::min<int64_t>(3, c.N - 1), n = c.N - r0, ld = c.K + 5;
    DevBuf d(size_t(n * ld) * 2);
    CUDA_OK(cuda::dequantize_int(w.dev, r0, n, d.p, ld, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = d.download<uint16_t>(size_t(n * ld));
    int64_t bad = 0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < c.K; ++k)
        bad += got[size_t(r * ld + k)] != f32_to_bf16(w.dense[size_t((r0 + r) * c.K + k)]);
    EXPECT_EQ(bad, 0);
  }
}

TEST(CudaIntGemv, MatchesReference) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::vector<Case> cases;
  for (const int64_t M : {1, 2, 3, 5, 8}) {
    const DType yt = M % 2 ? DType::BF16 : DType::F32;
    for (const Case& c : formats(M, yt, M == 2 || M == 5)) cases.push_back(c);
  }
  cases.push_back(Case{1, 1024, 14336, 0, 4, 128, true, DType::F32, true});  // the down product's K
  for (const Case& c : cases)
    check_product(g, c, tol(c.yt), [](const cuda::IntGemmParams& p) {
      ASSERT_TRUE(cuda::gemm_int_supported(p));
      CUDA_OK(cuda::gemv_int(p, nullptr));
    });
  // What the kernel refuses: K not whole 8-column chunks of x, a misaligned x, M past 8.
  DevBuf any(4096);
  cuda::IntMatrix m{any.p, any.as<float>(), nullptr, 4, 16, 64, 0, 1};
  cuda::IntGemmParams p{any.p, 64, m, any.p, 64, DType::F32, 1, false};
  EXPECT_TRUE(cuda::gemm_int_supported(p));
  p.w.K = 60;
  p.w.ng = cuda::int_scales_per_row(60, 0);
  EXPECT_FALSE(cuda::gemm_int_supported(p));
  p.w.K = 64;
  p.x = any.as<uint8_t>() + 2;
  EXPECT_FALSE(cuda::gemm_int_supported(p));
  p.x = any.p;
  p.M = 9;
  EXPECT_EQ(cuda::gemv_int(p, nullptr), cudaErrorInvalidValue);
  p.M = 1;
  p.w.group = 48;  // not a multiple of 32
  EXPECT_FALSE(cuda::gemm_int_supported(p));
}

// RMSNorm input (against norm-then-product on the host) and the SwiGLU output (bit for bit the
// RMSNorm-input product followed by silu_mul over groups of four).
TEST(CudaIntGemv, FusionsMatchUnfused) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (const int64_t M : {int64_t(1), int64_t(3), int64_t(4)})
    for (const IntQuantSpec spec : {IntQuantSpec{4, 128, true}, IntQuantSpec{4, 32, false}, IntQuantSpec{8, 0, true}}) {
      const int64_t K = 4096, N = 2 * 1032;
      SCOPED_TRACE(testing::Message() << "M=" << M << " INT" << spec.bits << " group " << spec.group);
      const IntW w = make_int(g, N, K, 0, spec);
      std::vector<float> x = randn(size_t(M * K), g, 3.0f), nw = randn(size_t(K), g);
      DevBuf dx = to_device(x), dnw = to_device(nw);
      DevBuf dgu(size_t(M * N) * 2), dref(size_t(M * N / 2) * 2), dout(size_t(M * N / 2) * 2);
      cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), 1e-5f};
      const cuda::IntGemmParams pg{dx.p, K, w.dev, dgu.p, N, DType::BF16, M, false};
      ASSERT_TRUE(cuda::gemv_int_fusable(pg, in));
      CUDA_OK(cuda::gemv_int(pg, nullptr, in));
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<float> xn(size_t(M * K));
      for (int64_t i = 0; i < M; ++i) {
        double ss = 0;
        for (int64_t k = 0; k < K; ++k) ss += double(x[size_t(i * K + k)]) * x[size_t(i * K + k)];
        const float inv = float(1.0 / std::sqrt(ss / double(K) + 1e-5));
        for (int64_t k = 0; k < K; ++k) xn[size_t(i * K + k)] = nw[size_t(k)] * (x[size_t(i * K + k)] * inv);
      }
      const auto ref = reference(round_bf16(xn), K, M, w, {}, N, false);
      EXPECT_LT(rel_err(download_f32(dgu, DType::BF16, size_t(M * N)), ref), 6e-3);
      cuda::SiluMulParams sp{dgu.p, N, nullptr, 0, DType::BF16, dref.p, N / 2, DType::BF16, M, N / 2};
      sp.group = 4;
      CUDA_OK(cuda::silu_mul(sp, nullptr));
      in.swiglu = true;
      const cuda::IntGemmParams ps{dx.p, K, w.dev, dout.p, N / 2, DType::BF16, M, false};
      ASSERT_TRUE(cuda::gemv_int_fusable(ps, in));
      CUDA_OK(cuda::gemv_int(ps, nullptr, in));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(dout.download<uint16_t>(size_t(M * N / 2)), dref.download<uint16_t>(size_t(M * N / 2)));
    }
}

// The q|k|v GEMV with RoPE and the K/V write in its epilogue: bit for bit the plain
// RMSNorm-input product followed by rope_kv_write (q|k|v rows and both caches), padding rows
// (slot -1) left out of the cache.
TEST(CudaIntGemv, RopeKVEpilogueMatchesProductThenRopeKVWrite) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t M, n_q_heads, n_kv_heads, hd, K; std::vector<int32_t> slots; IntQuantSpec q; };
  for (const C& c : {C{1, 32, 8, 128, 4096, {11}, {4, 128, true}}, C{3, 4, 2, 64, 512, {5, -1, 0}, {4, 32, false}},
                     C{4, 8, 1, 32, 256, {9, 2, 14, -1}, {8, 0, true}}, C{2, 6, 2, 64, 384, {3, 7}, {4, 64, true}}}) {
    SCOPED_TRACE(testing::Message() << "M=" << c.M << " heads=" << c.n_q_heads << "/" << c.n_kv_heads << " hd=" << c.hd
                                    << " INT" << c.q.bits << " group " << c.q.group);
    const int64_t M = c.M, K = c.K, nq = c.n_q_heads * c.hd, nk = c.n_kv_heads * c.hd, N = nq + 2 * nk, half = c.hd / 2;
    const int64_t ldy = N + 8, slots_total = 16;
    const IntW w = make_int(g, N, K, 0, c.q);
    std::vector<float> x = randn(size_t(M * K), g, 3.0f), nw = randn(size_t(K), g);
    std::vector<float> cs(size_t(M * half)), sn(size_t(M * half));
    for (int64_t t = 0; t < M; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(17 + 5 * t) * std::pow(10000.0, -2.0 * double(i) / double(c.hd));
        cs[size_t(t * half + i)] = float(std::cos(a));
        sn[size_t(t * half + i)] = float(std::sin(a));
      }
    DevBuf dx = to_device(x), dnw = to_device(nw);
    DevBuf dcos = to_device(cs), dsin = to_device(sn), dslots = to_device(c.slots);
    DevBuf y_ref(size_t(M * ldy) * 2), y(size_t(M * ldy) * 2);
    DevBuf k_ref(size_t(slots_total * nk) * 2), v_ref(size_t(slots_total * nk) * 2);
    DevBuf kc(size_t(slots_total * nk) * 2), vc(size_t(slots_total * nk) * 2);  // all poisoned (0xFF) alike
    cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), 1e-5f};
    // Reference: the product, then rope_kv_write.
    const cuda::IntGemmParams pr{dx.p, K, w.dev, y_ref.p, ldy, DType::BF16, M, false};
    CUDA_OK(cuda::gemv_int(pr, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    const auto plain = y_ref.download<uint16_t>(size_t(M * ldy));  // before rope_kv_write rotates it
    auto* yr = static_cast<uint16_t*>(y_ref.p);  // bf16
    const cuda::RopeParams rp{yr, ldy, c.n_q_heads, yr + nq, ldy, c.n_kv_heads, DType::BF16, M, c.hd, c.hd,
                              dcos.as<float>(), dsin.as<float>()};
    const cuda::KVCacheWriteParams kw{yr + nq, ldy, yr + nq + nk, ldy, DType::BF16, k_ref.p, v_ref.p, DType::BF16,
                                      dslots.as<int32_t>(), M, nk};
    CUDA_OK(cuda::rope_kv_write({rp, kw}, nullptr));
    // Fused.
    in.rope = true;
    in.rk = {dcos.as<float>(), dsin.as<float>(), nq, nk, c.hd, kc.p, vc.p, dslots.as<int32_t>()};
    const cuda::IntGemmParams pf{dx.p, K, w.dev, y.p, ldy, DType::BF16, M, false};
    ASSERT_TRUE(cuda::gemv_int_fusable(pf, in));
    CUDA_OK(cuda::gemv_int(pf, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    auto yf = y.download<uint16_t>(size_t(M * ldy)), yrf = y_ref.download<uint16_t>(size_t(M * ldy));
    for (int64_t t = 0; t < M; ++t)
      for (int64_t j = 0; j < N; ++j)
        ASSERT_EQ(yf[size_t(t * ldy + j)], yrf[size_t(t * ldy + j)]) << "token " << t << " feature " << j;
    EXPECT_EQ(kc.download<uint16_t>(size_t(slots_total * nk)), k_ref.download<uint16_t>(size_t(slots_total * nk)));
    EXPECT_EQ(vc.download<uint16_t>(size_t(slots_total * nk)), v_ref.download<uint16_t>(size_t(slots_total * nk)));
    // The product itself against the host reference (the unfused path above is checked too).
    std::vector<float> xn(size_t(M * K));
    for (int64_t i = 0; i < M; ++i) {
      double ss = 0;
      for (int64_t k = 0; k < K; ++k) ss += double(x[size_t(i * K + k)]) * x[size_t(i * K + k)];
      const float inv = float(1.0 / std::sqrt(ss / double(K) + 1e-5));
      for (int64_t k = 0; k < K; ++k) xn[size_t(i * K + k)] = nw[size_t(k)] * (x[size_t(i * K + k)] * inv);
    }
    const auto ref = reference(round_bf16(xn), K, M, w, {}, ldy, false);
    std::vector<float> vr = rows_of(ref, M, N, ldy), vg = rows_of(bf16_to_f32v(plain), M, N, ldy);
    EXPECT_LT(rel_err(vg, vr), 6e-3);
    cuda::GemvFusion bad = in;
    bad.rk.n_k = nk + c.hd;  // N no longer n_q + 2 n_k
    EXPECT_FALSE(cuda::gemv_int_fusable(pf, bad));
    bad = in;
    bad.rk.head_dim = 16;  // a head in less than a tile pair
    EXPECT_FALSE(cuda::gemv_int_fusable(pf, bad));
  }
}

TEST(CudaIntGemm, KernelMatchesReference) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  std::vector<Case> cases;
  for (const int64_t M : {9, 16, 17, 40, 64}) {
    const DType yt = M % 2 ? DType::BF16 : DType::F32;
    for (const Case& c : formats(M, yt, M == 17 || M == 64)) cases.push_back(c);
  }
  for (const Case& c : cases)
    check_product(g, c, tol(c.yt), [&](const cuda::IntGemmParams& p) {
      ASSERT_TRUE(cuda::gemm_int_supported(p));
      CUDA_OK(cuda::gemm_int(ctx, p, nullptr, 64));
    });
  // Every tiling the GEMM takes (whichever the shape rule or a later tuning picks), M = 1 included.
  for (const cuda::IntGemmTile t : {cuda::IntGemmTile{2, 2, 1}, cuda::IntGemmTile{4, 2, 1}, cuda::IntGemmTile{4, 2, 2},
                                    cuda::IntGemmTile{4, 4, 1}}) {
    SCOPED_TRACE(testing::Message() << "tile nt=" << t.nt << " rt=" << t.rt << " wt=" << t.wt);
    for (const Case c :
         {Case{1, 777, 1040, 16, 4, 32, false, DType::F32, true},
          Case{33, 1000, 2080, 8, 4, 128, true, DType::BF16, false},
          Case{64, 4096, 4096, 0, 4, 128, true, DType::F32, false}, Case{20, 40, 96, 0, 8, 0, true, DType::F32, true},
          Case{100, 777, 1040, 16, 8, 64, true, DType::BF16, true}})
      check_product(g, c, tol(c.yt),
                    [&](const cuda::IntGemmParams& p) { CUDA_OK(cuda::gemm_int(ctx, p, nullptr, 1 << 20, t)); });
  }
  DevBuf any(4096);
  const cuda::IntGemmParams bad{any.p, 64, cuda::IntMatrix{any.p, any.as<float>(), nullptr, 4, 16, 64, 0, 1}, any.p, 64,
                                DType::F32, 20, false};
  EXPECT_EQ(cuda::gemm_int(ctx, bad, nullptr, 64, cuda::IntGemmTile{8, 1, 1}), cudaErrorInvalidValue);
  cuda::gemm_context_destroy(ctx);
}

TEST(CudaIntGemm, DequantizedFallbackMatchesReference) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  // Above kernel_max_m, and any M where the kernel refuses the shape (K % 8 != 0); N past one
  // 64 MiB piece of dequantized rows.
  for (const Case c : {Case{100, 1000, 1024, 0, 4, 128, false, DType::BF16, false},
                       Case{129, 8448, 4096, 16, 4, 64, true, DType::F32, true},
                       Case{40, 512, 2048, 0, 8, 0, true, DType::BF16, false},
                       Case{3, 300, 100, 4, 8, 0, true, DType::F32, true},
                       Case{70, 96, 98, 0, 4, 0, false, DType::BF16, true}}) {
    // The fallback rounds each weight to bf16: within the bf16 tolerance of the f32 reference.
    check_product(g, c, 6e-3, [&](const cuda::IntGemmParams& p) {
      CUDA_OK(cuda::gemm_int(ctx, p, nullptr, 64));
    });
  }
  cuda::gemm_context_destroy(ctx);
}

TEST(CudaIntGemm, GatherColsPermutesX) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const int64_t M = 5, K = 1000, lds = 1008, ldd = 1004;
  std::vector<int32_t> perm(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) perm[size_t(i)] = int32_t(i);
  std::shuffle(perm.begin(), perm.end(), g);
  const auto x = to_bf16(randn(size_t(M * lds), g));
  DevBuf dx = to_device(x), dp = to_device(perm), dd(size_t(M * ldd) * 2);
  CUDA_OK(cuda::gather_cols(dx.p, lds, dp.as<int32_t>(), dd.p, ldd, M, K, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const auto got = dd.download<uint16_t>(size_t(M * ldd));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < K; ++j) ASSERT_EQ(got[size_t(m * ldd + j)], x[size_t(m * lds + perm[size_t(j)])]);
}

#ifdef GALE_FIXTURES_DIR

std::string bundled_model() { return std::string(GALE_FIXTURES_DIR) + "/../../models/default"; }

// Every layer projection of w rewritten as integer weights by quantize_int (buffers in w.owned).
// act_order: as a GPTQ act-order checkpoint stores them, the input columns in a random order
// (one per input width, so q|k|v and gate|up share theirs), stored column j holding input
// feature in_perm[j].
void quantize_projections(ModelWeights& w, const IntQuantSpec& q, bool act_order) {
  std::mt19937 g(7);
  std::map<int64_t, std::shared_ptr<int32_t[]>> perms;
  for_each_projection(w, [&](Linear& l) {
    if (!l.w) return;
    const int64_t bpr = int_code_bytes_per_row(q, l.in), spr = int_scales_per_row(q, l.in);
    auto codes = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out * bpr)]);
    auto scales = std::shared_ptr<float[]>(new float[size_t(l.out * spr)]);
    auto zeros = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out * spr)]);
    if (act_order) {
      std::shared_ptr<int32_t[]>& perm = perms[l.in];
      if (!perm) {
        perm = std::shared_ptr<int32_t[]>(new int32_t[size_t(l.in)]);
        for (int64_t j = 0; j < l.in; ++j) perm[j] = int32_t(j);
        std::shuffle(perm.get(), perm.get() + l.in, g);
        w.owned.push_back(perm);
      }
      std::vector<float> stored(size_t(l.out * l.in));
      for (int64_t r = 0; r < l.out; ++r)
        for (int64_t j = 0; j < l.in; ++j)
          stored[size_t(r * l.in + j)] = load_as_f32(l.w, l.dtype, size_t(r * l.row_stride() + perm[j]));
      quantize_int(stored.data(), DType::F32, l.out, l.in, l.in, q, nullptr, codes.get(), scales.get(), zeros.get());
      l.scheme.in_perm = perm.get();
    } else {
      quantize_int(l.w, l.dtype, l.out, l.in, l.row_stride(), q, nullptr, codes.get(), scales.get(), zeros.get());
    }
    l.w = codes.get();
    l.dtype = q.bits == 8 ? DType::I8 : DType::U8;
    l.ld = 0;
    l.scheme.scales = q.group > 0 ? WeightScheme::Scales::PerGroup : WeightScheme::Scales::PerChannel;
    l.scheme.group = q.group;
    l.scheme.scale = scales.get();
    l.scheme.scale_dtype = DType::F32;
    l.scheme.scale_ld = 0;
    l.scheme.zero = q.symmetric ? nullptr : zeros.get();
    l.scheme.packing = q.bits == 4 ? WeightScheme::Packing::U4 : WeightScheme::Packing::None;
    ASSERT_TRUE(l.integer_weights()) << l.name;
    w.owned.push_back(std::move(codes));
    w.owned.push_back(std::move(scales));
    w.owned.push_back(std::move(zeros));
  });
}

std::unique_ptr<Transformer> int_model(const IntQuantSpec& q, bool act_order, bool on_device) {
  const ModelConfig cfg = load_model_config(bundled_model());
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(bundled_model()));
  ModelWeights w = bind_weights(st, cfg);
  quantize_projections(w, q, act_order);
  BackendOptions bo;
  bo.device = "cuda";
  CudaOptions co;
  co.int_weights = on_device;
  bo.cuda = co;
  return std::make_unique<Transformer>(cfg, std::move(w), ActDType::BF16, make_backend(bo));
}

// All-position logits of one prompt run in chunks of `chunk` tokens (model_test.cpp's run()).
std::vector<float> run(Transformer& m, const std::vector<int32_t>& ids, int64_t chunk) {
  const int64_t bs = 16, n = int64_t(ids.size());
  KVCache kv(m.config(), (n + bs - 1) / bs, bs, m.kv_format(), &m.backend());
  std::vector<int32_t> table(size_t((n + bs - 1) / bs));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
  std::vector<float> all, part;
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t c = std::min(chunk, n - s);
    SeqStep st{std::span<const int32_t>(ids.data() + s, size_t(c)), s, table, SeqStep::Logits::All};
    m.forward({&st, 1}, kv, part);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

TEST(GpuIntModel, DeviceIntegerWeightsMatchDequantizedUpload) {
  GALE_REQUIRE_GPU();
  auto tok = Tokenizer::load(bundled_model());
  std::ifstream in(bundled_model() + "/../data/validation-head.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = tok->encode(ss.str());
  ASSERT_GE(ids.size(), 200u);
  ids.resize(200);
  // The last: act-order weights (x gathered on the device; un-permuted at the bf16 upload).
  struct V {
    IntQuantSpec q;
    bool act_order;
  };
  for (const V v :
       {V{{4, 128, true}, false}, V{{4, 32, false}, false}, V{{8, 0, true}, false}, V{{4, 64, false}, true}}) {
    const IntQuantSpec q = v.q;
    SCOPED_TRACE(testing::Message() << "INT" << q.bits << " group " << q.group << (q.symmetric ? "" : " zero points")
                                    << (v.act_order ? " act-order" : ""));
    auto dev = int_model(q, v.act_order, true), ref = int_model(q, v.act_order, false);
    if (testing::Test::HasFatalFailure()) return;
    const int64_t V = dev->config().vocab_size;
    // One pass (200 rows: the dequantizing fallback), chunks of 40 (the GEMM kernel), one token at
    // a time (the fused decode GEMVs).
    for (const int64_t chunk : {int64_t(200), int64_t(40), int64_t(1)}) {
      const std::vector<float> want = run(*ref, ids, chunk), got = run(*dev, ids, chunk);
      ASSERT_EQ(want.size(), got.size());
      double max_kl = 0, mean_kl = 0;
      int same = 0;
      for (size_t t = 0; t < ids.size(); ++t) {
        const float* x = want.data() + t * size_t(V);
        const float* y = got.data() + t * size_t(V);
        const double mx = *std::max_element(x, x + V), my = *std::max_element(y, y + V);
        double zx = 0, zy = 0;
        for (int64_t i = 0; i < V; ++i) zx += std::exp(x[i] - mx), zy += std::exp(y[i] - my);
        double kl = 0;
        for (int64_t i = 0; i < V; ++i) {
          const double lp = x[i] - mx - std::log(zx), lq = y[i] - my - std::log(zy);
          kl += std::exp(lp) * (lp - lq);
        }
        ASSERT_TRUE(std::isfinite(kl)) << "position " << t;
        max_kl = std::max(max_kl, kl);
        mean_kl += kl / double(ids.size());
        same += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
      }
      std::printf("[ int ] INT%d g%lld%s%s chunk %lld: mean KL %.2e, max KL %.2e, same argmax %d of %zu\n", q.bits,
                  (long long)q.group, q.symmetric ? "" : " zp", v.act_order ? " act-order" : "", (long long)chunk,
                  mean_kl, max_kl, same, ids.size());
      // Both multiply the same integer weights; they differ by the bf16 rounding of each
      // dequantized weight on the reference side (and the order of the f32 sums).
      EXPECT_LT(mean_kl, 2e-3);
      EXPECT_LT(max_kl, 3e-2);
      EXPECT_GE(same, int(ids.size()) * 95 / 100);
    }
  }
}

#endif  // GALE_FIXTURES_DIR

// ---- timings (disabled by default) --------------------------------------------------------------

// Median of `reps` timed runs of fn, in microseconds.
double time_us(const std::function<void()>& fn, int reps = 50) {
  for (int i = 0; i < 5; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return double(ms[ms.size() / 2]) * 1e3;
}

// Llama-3-8B's products (q|k|v, o, gate|up, down, LM head) at decode M = 1..8 and at M = 64: the
// integer kernels (INT4 group 128 symmetric, INT8 per channel) against the bf16 GEMV / cuBLASLt,
// with the bytes each reads per microsecond (GB/s).
TEST(CudaIntGemm, DISABLED_BenchLlama3Shapes) {
  GALE_REQUIRE_GPU();
  std::mt19937 g(1);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  const int64_t shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
  for (const auto& s : shapes) {
    const int64_t N = s[0], K = s[1];
    std::vector<uint16_t> wb(size_t(N * K));
    for (size_t i = 0; i < wb.size(); ++i) wb[i] = f32_to_bf16(float(int(i * 2654435761u % 2001) - 1000) * 1e-5f);
    DevBuf dwb = to_device(wb);
    const IntW w4 = make_int(g, N, K, 0, IntQuantSpec{4, 128, true}, false);
    const IntW w8 = make_int(g, N, K, 0, IntQuantSpec{8, 0, true}, false);
    for (const int64_t M : {1, 4, 8, 16, 32, 64, 128}) {
      DevBuf dx = to_device(to_bf16(randn(size_t(M * K), g))), dy(size_t(M * N) * 2);
      cuda::GemmParams pb{dx.p, K, dwb.p, K, dy.p, N, DType::BF16, M, N, K, false};
      const double tb = time_us([&] {
        if (M <= 8) cuda::gemv_bf16(pb, nullptr);
        else cuda::gemm_bf16(ctx, pb, nullptr);
      });
      const cuda::IntGemmParams p4{dx.p, K, w4.dev, dy.p, N, DType::BF16, M, false};
      const cuda::IntGemmParams p8{dx.p, K, w8.dev, dy.p, N, DType::BF16, M, false};
      const double t4 = time_us([&] { cuda::gemm_int(ctx, p4, nullptr, 128); });
      const double t8 = time_us([&] { cuda::gemm_int(ctx, p8, nullptr, 128); });
      const double t4f = M > 8 ? time_us([&] { cuda::gemm_int(ctx, p4, nullptr, 0); }) : 0;
      std::string tiles;  // INT4 under each tiling of the GEMM (nt.rt.wt: microseconds)
      if (M > 8)
        for (const cuda::IntGemmTile t : {cuda::IntGemmTile{2, 2, 1}, cuda::IntGemmTile{4, 2, 1},
                                          cuda::IntGemmTile{4, 2, 2}, cuda::IntGemmTile{4, 4, 1}}) {
          char b[48];
          std::snprintf(b, sizeof b, " %d.%d.%d:%.1f", t.nt, t.rt, t.wt,
                        time_us([&] { cuda::gemm_int(ctx, p4, nullptr, 1 << 20, t); }));
          tiles += b;
        }
      CUDA_OK(cudaDeviceSynchronize());
      const double b16 = double(N * K) * 2, b4 = double(N * K) / 2 + double(N * K / 128) * 4,
                   b8 = double(N * K) + N * 4;
      std::printf(
          "N=%6lld K=%5lld M=%3lld  bf16 %8.1f us %6.0f GB/s | int4 %8.1f us %6.0f GB/s (%.2fx) | int8 %8.1f us %6.0f "
          "GB/s (%.2fx)%s",
          (long long)N, (long long)K, (long long)M, tb, b16 / tb / 1e3, t4, b4 / t4 / 1e3, tb / t4, t8, b8 / t8 / 1e3,
          tb / t8, M > 8 ? "" : "\n");
      if (M > 8) std::printf(" | int4 fallback %8.1f us | tiles%s\n", t4f, tiles.c_str());
      if (M <= 4 && K == 4096) {  // the RMSNorm-staging GEMV (q|k|v, gate|up): what staging costs
        DevBuf xf = to_device(randn(size_t(M * K), g)), nw = to_device(randn(size_t(K), g));
        const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, nw.as<float>(), 1e-5f};
        cuda::GemmParams pbn = pb;
        pbn.x = xf.p;
        cuda::IntGemmParams p4n = p4;
        p4n.x = xf.p;
        const double tbn = time_us([&] { cuda::gemv_bf16(pbn, nullptr, in); });
        const double t4n = time_us([&] { cuda::gemv_int(p4n, nullptr, in); });
        CUDA_OK(cudaDeviceSynchronize());
        std::printf("                        with RMSNorm staged: bf16 %8.1f us | int4 %8.1f us (%.2fx)\n", tbn, t4n,
                    tbn / t4n);
      }
    }
  }
  cuda::gemm_context_destroy(ctx);
}

}  // namespace
}  // namespace gale
