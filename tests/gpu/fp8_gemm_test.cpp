// The FP8-weight products against gale::ref::matmul_scaled (double accumulation): the decode
// GEMV over E4M3 rows with a scale per row or per group of columns (plain, RMSNorm input,
// SwiGLU output), and gemm_fp8 both ways: W8A8 (x quantized per token, cuBLASLt FP8 with
// outer-vector scales; the reference quantizes x on the host by the same rule) and the
// dequantize-then-bf16 fallback.
#include <cstdio>
#include <cmath>
#include <functional>

#include "gpu_test_util.h"
#include "kernels/cuda/fp8_convert.cuh"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "kernels/ref/matmul_ref.h"

namespace gale {
namespace {

using namespace gale::test;

// Random E4M3 weights [N, ldw] (the row padding 0x7F, NaN: never read) and a positive scale grid
// of `srows` x `scols` tiles, [ceil(N / srows)][sld].
struct Fp8W {
  std::vector<uint8_t> w;
  std::vector<float> s;
  int64_t N, K, ldw, srows, scols, sld;
};
Fp8W random_fp8(std::mt19937& g, int64_t N, int64_t K, int64_t pad, int64_t srows, int64_t scols) {
  Fp8W r{{}, {}, N, K, K + pad, srows, scols, (K + scols - 1) / scols};
  std::normal_distribution<float> d(0.0f, 100.0f);
  r.w.assign(size_t(N * r.ldw), 0x7F);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < K; ++k) r.w[size_t(i * r.ldw + k)] = f32_to_f8e4m3(d(g));
  std::uniform_real_distribution<float> u(0.2f, 2.0f);
  r.s.resize(size_t((N + srows - 1) / srows * r.sld));
  for (float& v : r.s) v = u(g) * 1e-3f;
  return r;
}

cuda::GemmParams fp8_params(const DevBuf& dx, int64_t ldx, const DevBuf& dw, const Fp8W& w, const DevBuf& ds,
                            const DevBuf& dy, int64_t ldy, DType yt, int64_t M, bool acc) {
  cuda::GemmParams p{dx.p, ldx, dw.p, w.ldw, dy.p, ldy, yt, M, w.N, w.K, acc};
  p.w_dtype = DType::F8_E4M3;
  p.w_scale = ds.as<float>();
  p.ws_rows = w.srows;
  p.ws_cols = w.scols;
  p.ws_ld = w.sld;
  return p;
}

// y = x · (W · s)ᵀ on the host, W without its padding.
std::vector<float> reference(const std::vector<float>& x, int64_t ldx, int64_t M, const Fp8W& w,
                             const std::vector<float>& y0, int64_t ldy, bool acc) {
  std::vector<uint8_t> dense(size_t(w.N * w.K));
  for (int64_t i = 0; i < w.N; ++i)
    for (int64_t k = 0; k < w.K; ++k) dense[size_t(i * w.K + k)] = w.w[size_t(i * w.ldw + k)];
  std::vector<float> ref(size_t(M * ldy), 0.0f);
  if (acc) ref = y0;
  ref::matmul_scaled(x.data(), ldx, M, w.K, dense.data(), DType::F8_E4M3, w.N, w.s.data(), w.srows, w.scols, w.sld,
                     nullptr, ref.data(), ldy, acc);
  return ref;
}

std::vector<float> rows_of(const std::vector<float>& y, int64_t M, int64_t N, int64_t ldy) {
  std::vector<float> o;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) o.push_back(y[size_t(i * ldy + j)]);
  return o;
}

struct Case { int64_t M, N, K, pad, srows, scols; DType yt; bool acc; };

// x quantized per token (group 0) or per token and `group` columns as quantize_rows_fp8 does:
// scale = max(amax, 1e-12) / 448, values x * (1 / scale) rounded to E4M3; returns the
// dequantized rows (what W8A8 multiplies).
std::vector<float> quantize_rows_host(const std::vector<float>& x, int64_t M, int64_t K, int64_t ldx, int64_t group) {
  std::vector<float> q(size_t(M * ldx), 0.0f);
  const int64_t G = group > 0 ? group : K;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k0 = 0; k0 < K; k0 += G) {
      const int64_t k1 = std::min(K, k0 + G);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[size_t(i * ldx + k)]));
      const float scale = std::max(amax, 1e-12f) / kF8E4M3Max, inv = 1.0f / scale;
      for (int64_t k = k0; k < k1; ++k)
        q[size_t(i * ldx + k)] = f8e4m3_to_f32(f32_to_f8e4m3(x[size_t(i * ldx + k)] * inv)) * scale;
    }
  return q;
}

// One product case: random E4M3 W with c's scale tiles, bf16 x, y preset when accumulating;
// `launch` runs the product once; y against the reference over x, or (x_group set) over x
// quantized as the W8A8 path multiplies it: per token when *x_group is 0, per token and *x_group
// columns otherwise (read after the launch, which may set it from the path it took), within tol.
void check_fp8_product(std::mt19937& g, const Case& c, const int64_t* x_group, double tol,
                       const std::function<void(const cuda::GemmParams&)>& launch) {
  SCOPED_TRACE(testing::Message() << "M=" << c.M << " N=" << c.N << " K=" << c.K << " tile " << c.srows << "x" << c.scols);
  const Fp8W w = random_fp8(g, c.N, c.K, c.pad, c.srows, c.scols);
  const int64_t ldx = c.K + c.pad, ldy = c.N + c.pad;
  const std::vector<float> x = round_bf16(randn(size_t(c.M * ldx), g));
  std::vector<float> y0 = randn(size_t(c.M * ldy), g);
  if (c.yt == DType::BF16) y0 = round_bf16(y0);
  DevBuf dx = to_device(to_bf16(x)), dw = to_device(w.w), ds = to_device(w.s), dy(size_t(c.M * ldy) * dtype_size(c.yt));
  if (c.acc) upload_as(dy, y0, c.yt);
  launch(fp8_params(dx, ldx, dw, w, ds, dy, ldy, c.yt, c.M, c.acc));
  if (testing::Test::HasFatalFailure()) return;
  CUDA_OK(cudaDeviceSynchronize());
  const auto ref = reference(x_group ? quantize_rows_host(x, c.M, c.K, ldx, *x_group) : x, ldx, c.M, w, y0, ldy, c.acc);
  EXPECT_LT(rel_err(rows_of(download_f32(dy, c.yt, size_t(c.M * ldy)), c.M, c.N, ldy), rows_of(ref, c.M, c.N, ldy)), tol);
}

TEST(CudaGemvFp8, MatchesReferenceMatmulScaled) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  // Per-row scales (scols >= K), per-tensor (one tile), 128 x 128 blocks, rows of 128-column groups,
  // a K not a whole number of unrolled steps, padded strides, M up to 8.
  for (const Case c : {Case{1, 4096, 4096, 0, 1, 4096, DType::BF16, false}, Case{1, 1000, 14336, 0, 1, 14336, DType::F32, true},
                       Case{2, 777, 1040, 16, 777, 1040, DType::BF16, false}, Case{3, 640, 4096, 0, 128, 128, DType::F32, false},
                       Case{4, 6144, 4096, 0, 1, 128, DType::BF16, false}, Case{8, 513, 2064, 16, 1, 2064, DType::F32, true},
                       Case{5, 100, 16, 0, 1, 16, DType::BF16, true}, Case{1, 300, 1024, 32, 128, 128, DType::F32, true}}) {
    check_fp8_product(g, c, nullptr, tol_for(c.yt), [](const cuda::GemmParams& p) {
      ASSERT_TRUE(cuda::gemv_bf16_supported(p));
      CUDA_OK(cuda::gemv_bf16(p, nullptr));
    });
  }
  // What the GEMV refuses: K not whole 16-weight loads, scale groups splitting a load, no scales.
  DevBuf any(256);
  cuda::GemmParams p{any.p, 64, any.p, 64, any.p, 64, DType::F32, 1, 8, 64, false};
  p.w_dtype = DType::F8_E4M3;
  p.w_scale = any.as<float>();
  p.ws_cols = 64;
  EXPECT_TRUE(cuda::gemv_bf16_supported(p));
  p.K = 56;
  EXPECT_FALSE(cuda::gemv_bf16_supported(p));
  p.K = 64;
  p.ws_cols = 24;
  EXPECT_FALSE(cuda::gemv_bf16_supported(p));
  p.ws_cols = 64;
  p.w_scale = nullptr;
  EXPECT_FALSE(cuda::gemv_bf16_supported(p));
}

// The fusions over FP8 rows: RMSNorm input (against norm-then-product on the host) and the
// SwiGLU output (bit for bit the RMSNorm-input product followed by silu_mul).
TEST(CudaGemvFp8, FusionsMatchUnfused) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (const int64_t M : {int64_t(1), int64_t(3)}) {
    const int64_t K = 4096, N = 2 * 1032;
    SCOPED_TRACE(testing::Message() << "M=" << M);
    const Fp8W w = random_fp8(g, N, K, 0, 1, M == 1 ? K : 128);
    std::vector<float> x = randn(size_t(M * K), g, 3.0f), nw = randn(size_t(K), g);
    DevBuf dx = to_device(x), dnw = to_device(nw), dw = to_device(w.w), ds = to_device(w.s);
    DevBuf dgu(size_t(M * N) * 2), dref(size_t(M * N / 2) * 2), dout(size_t(M * N / 2) * 2);
    cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), 1e-5f};
    const cuda::GemmParams pg = fp8_params(dx, K, dw, w, ds, dgu, N, DType::BF16, M, false);
    ASSERT_TRUE(cuda::gemv_bf16_fusable(pg, in));
    CUDA_OK(cuda::gemv_bf16(pg, nullptr, in));
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
    const cuda::GemmParams ps = fp8_params(dx, K, dw, w, ds, dout, N / 2, DType::BF16, M, false);
    ASSERT_TRUE(cuda::gemv_bf16_fusable(ps, in));
    CUDA_OK(cuda::gemv_bf16(ps, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dout.download<uint16_t>(size_t(M * N / 2)), dref.download<uint16_t>(size_t(M * N / 2)));
  }
}

TEST(CudaGemmFp8, W8A8MatchesReferenceOnQuantizedRows) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  // Per-row scales through every W8A8 path (the 1 x 128 group one, then with it off the per-token
  // ones), 128 x 128 blocks through the group path; a K of partial groups (1040) per token only.
  struct W8A8Case { Case c; bool groups; };
  for (const auto& [c, groups] :
       {W8A8Case{{64, 1024, 4096, 0, 1, 4096, DType::BF16, false}, true},
        W8A8Case{{333, 768, 1024, 0, 1, 1024, DType::F32, true}, true},
        W8A8Case{{17, 4096, 512, 16, 1, 512, DType::F32, false}, true},
        W8A8Case{{200, 1000, 2048, 0, 128, 128, DType::BF16, true}, true},
        W8A8Case{{96, 512, 1040, 0, 1, 1040, DType::BF16, false}, true},
        W8A8Case{{64, 1024, 4096, 0, 1, 4096, DType::BF16, false}, false},
        W8A8Case{{333, 768, 1024, 0, 1, 1024, DType::F32, true}, false}}) {
    cuda::gemm_set_fp8_group_scales(ctx, groups);
    int64_t x_group = 0;
    // The tensor cores sum E4M3 products in their own order and precision (2^-22 relative at
    // worst per partial sum on Hopper, far below the bf16 output's rounding).
    check_fp8_product(g, c, &x_group, c.yt == DType::F32 ? 1e-3 : 6e-3, [&](const cuda::GemmParams& p) {
      ASSERT_EQ(cuda::gemm_fp8(ctx, p, nullptr, true), cudaSuccess) << cuda::gemm_last_error(ctx);
      const std::string path = cuda::gemm_fp8_last_path(ctx);
      x_group = path == "w8a8-vec128" || path == "w8a8-blk128" ? 128 : 0;
      // A product that fell back to dequantized W would miss the test's quantized-x reference
      // by E4M3's rounding of x (~2.6 %): say which path ran, and require a W8A8 one.
      std::printf("W8A8 M=%lld N=%lld K=%lld: %s%s%s\n", (long long)p.M, (long long)p.N, (long long)p.K,
                  cuda::gemm_fp8_last_path(ctx), *cuda::gemm_last_error(ctx) ? "; last cuBLASLt error: " : "",
                  cuda::gemm_last_error(ctx));
      EXPECT_STRNE(cuda::gemm_fp8_last_path(ctx), "dequantize") << cuda::gemm_last_error(ctx);
    });
  }
  cuda::gemm_context_destroy(ctx);
}

TEST(CudaGemmFp8, DequantizedFallbackMatchesReference) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  // Block scales always take the fallback; per-row scales do with w8a8 off. N past one 64 MiB piece.
  for (const Case c : {Case{40, 1000, 1024, 0, 128, 128, DType::BF16, false}, Case{129, 8448, 4096, 16, 128, 128, DType::F32, true},
                       Case{300, 512, 2048, 0, 1, 2048, DType::BF16, false}}) {
    // The fallback rounds each scaled weight to bf16: within the bf16 tolerance of the f32 reference.
    check_fp8_product(g, c, nullptr, 6e-3, [&](const cuda::GemmParams& p) {
      ASSERT_EQ(cuda::gemm_fp8(ctx, p, nullptr, false), cudaSuccess) << cuda::gemm_last_error(ctx);
    });
  }
  cuda::gemm_context_destroy(ctx);
}

}  // namespace
}  // namespace gale
