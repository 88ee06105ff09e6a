// The bf16 products (cuBLASLt GEMM wrapper, decode GEMV) against gale::ref::matmul (double
// accumulation) on the same bf16 values.
#include <cmath>
#include <functional>

#include "gpu_test_util.h"
#include "kernels/cuda/gemm_lt.cuh"
#include "kernels/cuda/gemv_bf16.cuh"
#include "kernels/cuda/rope_kv_write.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "kernels/ref/matmul_ref.h"

namespace gale {
namespace {

using namespace gale::test;

struct ProductCase { int64_t M, N, K; DType yt; bool acc; int64_t pad; };

// Random bf16 x and W (W's row padding NaN when poison_w_pad: never read), y preset when
// accumulating; `launch` runs the product `runs` times; checks y against the reference and that
// y's row padding was not written.
void check_product(std::mt19937& g, const ProductCase& c, int runs, bool poison_w_pad,
                   const std::function<void(const cuda::GemmParams&)>& launch) {
  SCOPED_TRACE(testing::Message() << "M=" << c.M << " N=" << c.N << " K=" << c.K << " acc=" << c.acc);
  const int64_t ldx = c.K + c.pad, ldw = c.K + c.pad, ldy = c.N + c.pad;
  std::vector<float> x = round_bf16(randn(size_t(c.M * ldx), g)), w = round_bf16(randn(size_t(c.N * ldw), g, 0.05f));
  if (poison_w_pad)
    for (int64_t i = 0; i < c.N; ++i)
      for (int64_t j = c.K; j < ldw; ++j) w[size_t(i * ldw + j)] = NAN;
  std::vector<float> y0 = randn(size_t(c.M * ldy), g);
  if (c.yt == DType::BF16) y0 = round_bf16(y0);
  DevBuf dx = to_device(to_bf16(x));
  auto wb = to_bf16(w);
  DevBuf dw = to_device(wb);
  DevBuf dy(size_t(c.M * ldy) * dtype_size(c.yt));
  if (c.acc) {
    if (c.yt == DType::F32) dy.upload(y0);
    else dy.upload(to_bf16(y0));
  }
  const cuda::GemmParams p{dx.p, ldx, dw.p, ldw, dy.p, ldy, c.yt, c.M, c.N, c.K, c.acc};
  for (int r = 0; r < runs; ++r) {
    launch(p);
    if (testing::Test::HasFatalFailure()) return;
  }
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> wdense(static_cast<size_t>(c.N * c.K));  // ref::matmul takes W with row stride K
  for (int64_t i = 0; i < c.N; ++i)
    for (int64_t j = 0; j < c.K; ++j) wdense[size_t(i * c.K + j)] = wb[size_t(i * ldw + j)];
  // With accumulate the reference adds x·Wᵀ once per run.
  std::vector<float> ref(static_cast<size_t>(c.M * ldy));
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.N; ++j) ref[size_t(i * ldy + j)] = c.acc ? y0[size_t(i * ldy + j)] : 0.0f;
  for (int rep = 0; rep < (c.acc ? runs : 1); ++rep)
    ref::matmul(x.data(), ldx, c.M, c.K, wdense.data(), DType::BF16, c.N, nullptr, ref.data(), ldy, true);
  auto y = download_f32(dy, c.yt, size_t(c.M * ldy));
  std::vector<float> out, rr;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.N; ++j) {
      out.push_back(y[size_t(i * ldy + j)]);
      rr.push_back(ref[size_t(i * ldy + j)]);
    }
  // f32 output: only accumulation order differs; bf16 output: one rounding (twice with acc).
  EXPECT_LT(rel_err(out, rr), c.yt == DType::F32 ? 1e-5 : 6e-3);
  if (c.pad && !c.acc) {
    EXPECT_TRUE(std::isnan(y[size_t(c.N)])) << "row padding written";
  }
}

TEST(CudaGemmLt, MatchesReferenceMatmul) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  cuda::GemmContext* ctx = nullptr;
  CUDA_OK(cuda::gemm_context_create(&ctx));
  for (const ProductCase c : {ProductCase{1, 1024, 4096, DType::BF16, false, 0}, ProductCase{7, 1000, 512, DType::F32, true, 0},
                              ProductCase{64, 256, 2048, DType::BF16, false, 8}, ProductCase{333, 768, 1024, DType::F32, false, 0},
                              ProductCase{129, 4104, 96, DType::BF16, true, 16}})
    check_product(g, c, c.acc ? 2 : 1, false, [&](const cuda::GemmParams& p) {
      ASSERT_EQ(cuda::gemm_bf16(ctx, p, nullptr), cudaSuccess) << cuda::gemm_last_error(ctx);
    });
  EXPECT_EQ(cuda::gemm_cached_plans(ctx), 5u);
  cuda::gemm_context_destroy(ctx);
}

// The decode GEMV (M <= 8) against the same reference: f32 or bf16 output, accumulate, padded
// strides, K with a tail that is not a whole number of unrolled steps, W rows NaN-poisoned past K.
TEST(CudaGemv, MatchesReferenceMatmul) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (const ProductCase c : {ProductCase{1, 4096, 4096, DType::BF16, false, 0}, ProductCase{1, 1000, 14336, DType::F32, true, 0},
                              ProductCase{2, 777, 1032, DType::BF16, false, 8}, ProductCase{3, 129, 64, DType::F32, false, 16},
                              ProductCase{4, 6144, 4096, DType::BF16, false, 0}, ProductCase{8, 513, 2056, DType::F32, true, 8},
                              ProductCase{5, 100, 8, DType::BF16, true, 0}, ProductCase{1, 9000, 2048, DType::BF16, false, 0},
                              ProductCase{3, 12000, 520, DType::F32, true, 8}})
    check_product(g, c, 1, true, [](const cuda::GemmParams& p) {
      ASSERT_TRUE(cuda::gemv_bf16_supported(p));
      CUDA_OK(cuda::gemv_bf16(p, nullptr));
    });
  cuda::GemmParams bad{};
  bad.M = 9;
  bad.K = 64;
  EXPECT_FALSE(cuda::gemv_bf16_supported(bad));
}

// The GEMV that normalizes its input itself: f32 rows x, y = bf16(w * x / rms(x)) · Wᵀ, against
// the same formula on the host (as the RMSNorm kernel + plain GEMV would compute it).
TEST(CudaGemv, RMSNormInputMatchesNormThenProduct) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t M, N, K, pad; DType yt; };
  for (const C c : {C{1, 6144, 4096, 0, DType::BF16}, C{3, 1000, 1032, 8, DType::F32}, C{4, 2056, 4096, 0, DType::BF16},
                    C{2, 40, 64, 16, DType::F32}}) {
    SCOPED_TRACE(testing::Message() << "M=" << c.M << " N=" << c.N << " K=" << c.K);
    const int64_t ldx = c.K + c.pad, ldy = c.N + c.pad;
    const float eps = 1e-5f;
    std::vector<float> x = randn(size_t(c.M * ldx), g, 3.0f), nw = randn(size_t(c.K), g);
    std::vector<float> w = round_bf16(randn(size_t(c.N * c.K), g, 0.05f));
    DevBuf dx = to_device(x), dnw = to_device(nw), dy(size_t(c.M * ldy) * dtype_size(c.yt));
    auto wb = to_bf16(w);
    DevBuf dw = to_device(wb);
    const cuda::GemmParams p{dx.p, ldx, dw.p, c.K, dy.p, ldy, c.yt, c.M, c.N, c.K, false};
    const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), eps};
    ASSERT_TRUE(cuda::gemv_bf16_fusable(p, in));
    CUDA_OK(cuda::gemv_bf16(p, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> xn(size_t(c.M * c.K)), ref(size_t(c.M * c.N));
    for (int64_t i = 0; i < c.M; ++i) {
      double ss = 0;
      for (int64_t k = 0; k < c.K; ++k) ss += double(x[size_t(i * ldx + k)]) * x[size_t(i * ldx + k)];
      const float inv = float(1.0 / std::sqrt(ss / double(c.K) + eps));
      for (int64_t k = 0; k < c.K; ++k) xn[size_t(i * c.K + k)] = nw[size_t(k)] * (x[size_t(i * ldx + k)] * inv);
    }
    xn = round_bf16(xn);
    ref::matmul(xn.data(), c.K, c.M, c.K, wb.data(), DType::BF16, c.N, nullptr, ref.data(), c.N, true);
    auto y = download_f32(dy, c.yt, size_t(c.M * ldy));
    std::vector<float> out;
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) out.push_back(y[size_t(i * ldy + j)]);
    EXPECT_LT(rel_err(out, ref), c.yt == DType::F32 ? 2e-3 : 6e-3);
  }
  // SwiGLU output over an interleaved gate|up: bit for bit the plain RMSNorm-input product
  // followed by silu_mul over its groups of four.
  for (const int64_t M : {int64_t(1), int64_t(4)}) {
    const int64_t K = 4096, N = 2 * 1032;
    SCOPED_TRACE(testing::Message() << "swiglu M=" << M);
    std::vector<float> x = randn(size_t(M * K), g, 3.0f), nw = randn(size_t(K), g);
    DevBuf dx = to_device(x), dnw = to_device(nw), dw = to_device(to_bf16(round_bf16(randn(size_t(N * K), g, 0.05f))));
    DevBuf dgu(size_t(M * N) * 2), dref(size_t(M * N / 2) * 2), dout(size_t(M * N / 2) * 2);
    cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), 1e-5f};
    const cuda::GemmParams pg{dx.p, K, dw.p, K, dgu.p, N, DType::BF16, M, N, K, false};
    CUDA_OK(cuda::gemv_bf16(pg, nullptr, in));
    cuda::SiluMulParams sp{dgu.p, N, nullptr, 0, DType::BF16, dref.p, N / 2, DType::BF16, M, N / 2};
    sp.group = 4;
    CUDA_OK(cuda::silu_mul(sp, nullptr));
    in.swiglu = true;
    const cuda::GemmParams ps{dx.p, K, dw.p, K, dout.p, N / 2, DType::BF16, M, N, K, false};
    ASSERT_TRUE(cuda::gemv_bf16_fusable(ps, in));
    CUDA_OK(cuda::gemv_bf16(ps, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dout.download<uint16_t>(size_t(M * N / 2)), dref.download<uint16_t>(size_t(M * N / 2)));
    cuda::GemmParams odd = ps;
    odd.N = N - 4;  // not whole blocks of 4 gate + 4 up rows
    EXPECT_FALSE(cuda::gemv_bf16_fusable(odd, in));
  }
  // Beyond the staging budget (M > 4, or M * K * 2 bytes > 32 KB) the caller must not fuse.
  cuda::GemmParams big{};
  big.M = 5;
  big.N = 8;
  big.K = 64;
  big.ldx = big.ldw = 64;
  big.x = big.w = reinterpret_cast<void*>(uintptr_t(256));
  big.y_dtype = DType::F32;
  const cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, reinterpret_cast<const float*>(uintptr_t(256)), 1e-5f};
  EXPECT_FALSE(cuda::gemv_bf16_fusable(big, in));
  big.M = 1;
  EXPECT_TRUE(cuda::gemv_bf16_fusable(big, in));
  big.K = big.ldx = big.ldw = 16392;
  EXPECT_FALSE(cuda::gemv_bf16_fusable(big, in));
}

// The q|k|v GEMV with RoPE and the K/V write in its epilogue: bit for bit the plain
// RMSNorm-input product followed by rope_kv_write (q|k|v rows and both caches), padding rows
// (slot -1) left out of the cache.
TEST(CudaGemv, RopeKVEpilogueMatchesProductThenRopeKVWrite) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t M, n_q_heads, n_kv_heads, hd, K; std::vector<int32_t> slots; };
  for (const C& c : {C{1, 32, 8, 128, 4096, {11}}, C{3, 4, 2, 64, 512, {5, -1, 0}}, C{4, 8, 1, 16, 256, {9, 2, 14, -1}}}) {
    SCOPED_TRACE(testing::Message() << "M=" << c.M << " heads=" << c.n_q_heads << "/" << c.n_kv_heads << " hd=" << c.hd);
    const int64_t M = c.M, K = c.K, nq = c.n_q_heads * c.hd, nk = c.n_kv_heads * c.hd, N = nq + 2 * nk, half = c.hd / 2;
    const int64_t ldy = N + 8, slots_total = 16;
    std::vector<float> x = randn(size_t(M * K), g, 3.0f), nw = randn(size_t(K), g);
    std::vector<float> cs(size_t(M * half)), sn(size_t(M * half));
    for (int64_t t = 0; t < M; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(17 + 5 * t) * std::pow(10000.0, -2.0 * double(i) / double(c.hd));
        cs[size_t(t * half + i)] = float(std::cos(a));
        sn[size_t(t * half + i)] = float(std::sin(a));
      }
    DevBuf dx = to_device(x), dnw = to_device(nw), dw = to_device(to_bf16(round_bf16(randn(size_t(N * K), g, 0.05f))));
    DevBuf dcos = to_device(cs), dsin = to_device(sn), dslots = to_device(c.slots);
    DevBuf y_ref(size_t(M * ldy) * 2), y(size_t(M * ldy) * 2);
    DevBuf k_ref(size_t(slots_total * nk) * 2), v_ref(size_t(slots_total * nk) * 2);
    DevBuf kc(size_t(slots_total * nk) * 2), vc(size_t(slots_total * nk) * 2);  // all poisoned (0xFF) alike
    cuda::GemvFusion in{cuda::GemvFusion::kRMSNorm, dnw.as<float>(), 1e-5f};
    // Reference: the product, then rope_kv_write.
    const cuda::GemmParams pr{dx.p, K, dw.p, K, y_ref.p, ldy, DType::BF16, M, N, K, false};
    CUDA_OK(cuda::gemv_bf16(pr, nullptr, in));
    auto* yr = static_cast<uint16_t*>(y_ref.p);  // bf16
    const cuda::RopeParams rp{yr, ldy, c.n_q_heads, yr + nq, ldy, c.n_kv_heads, DType::BF16, M, c.hd, c.hd,
                              dcos.as<float>(), dsin.as<float>()};
    const cuda::KVCacheWriteParams kw{yr + nq, ldy, yr + nq + nk, ldy, DType::BF16, k_ref.p, v_ref.p, DType::BF16,
                                      dslots.as<int32_t>(), M, nk};
    CUDA_OK(cuda::rope_kv_write({rp, kw}, nullptr));
    // Fused.
    in.rope = true;
    in.rk = {dcos.as<float>(), dsin.as<float>(), nq, nk, c.hd, kc.p, vc.p, dslots.as<int32_t>()};
    const cuda::GemmParams pf{dx.p, K, dw.p, K, y.p, ldy, DType::BF16, M, N, K, false};
    ASSERT_TRUE(cuda::gemv_bf16_fusable(pf, in));
    CUDA_OK(cuda::gemv_bf16(pf, nullptr, in));
    CUDA_OK(cudaDeviceSynchronize());
    auto yf = y.download<uint16_t>(size_t(M * ldy)), yrf = y_ref.download<uint16_t>(size_t(M * ldy));
    for (int64_t t = 0; t < M; ++t)
      for (int64_t j = 0; j < N; ++j)
        ASSERT_EQ(yf[size_t(t * ldy + j)], yrf[size_t(t * ldy + j)]) << "token " << t << " feature " << j;
    EXPECT_EQ(kc.download<uint16_t>(size_t(slots_total * nk)), k_ref.download<uint16_t>(size_t(slots_total * nk)));
    EXPECT_EQ(vc.download<uint16_t>(size_t(slots_total * nk)), v_ref.download<uint16_t>(size_t(slots_total * nk)));
    cuda::GemvFusion bad = in;
    bad.rk.n_k = nk + c.hd;  // N no longer n_q + 2 n_k
    EXPECT_FALSE(cuda::gemv_bf16_fusable(pf, bad));
  }
}

}  // namespace
}  // namespace gale
