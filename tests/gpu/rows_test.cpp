// The row kernels of the CUDA backend against scalar loops: gather_rows (MoE dispatch, logit
// rows), scatter_add_rows (MoE combine), bias_add (Qwen2 q/k/v biases) and head_rmsnorm
// (Qwen3 q/k norm over column ranges of the fused q|k|v output) against cpu::rmsnorm.
#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/bias_add.cuh"
#include "kernels/cuda/gather_rows.cuh"
#include "kernels/cuda/head_rmsnorm.cuh"
#include "kernels/cuda/scatter_add_rows.cuh"

namespace gale {
namespace {

using namespace gale::test;

TEST(CudaGatherRows, CopiesTheListedRowsExactly) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (DType t : {DType::F32, DType::BF16}) {
    const int64_t rows = 37, cols = 300, lds = 320, n = 50, ldd = 301;
    DevBuf src(size_t(rows * lds) * dtype_size(t)), dst(size_t(n * ldd) * dtype_size(t));
    auto s = upload_as(src, randn(size_t(rows * lds), g), t);
    std::vector<int32_t> idx(static_cast<size_t>(n));
    for (auto& i : idx) i = int32_t(g() % uint32_t(rows));  // repeats allowed for a gather
    DevBuf didx = to_device(idx);
    cuda::GatherRowsParams p{src.p, lds, didx.as<int32_t>(), dst.p, ldd, t, n, cols};
    CUDA_OK(cuda::gather_rows(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    auto out = download_f32(dst, t, size_t(n * ldd));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(out[size_t(i * ldd + c)], s[size_t(idx[size_t(i)] * lds + c)]) << i << "," << c;
  }
}

TEST(CudaScatterAddRows, AddsWeightedRowsIntoTheirDestinations) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (DType t : {DType::F32, DType::BF16}) {
    const int64_t rows = 40, cols = 257, n = 17;
    DevBuf src(size_t(n * cols) * dtype_size(t)), dst(size_t(rows * cols) * 4);
    auto s = upload_as(src, randn(size_t(n * cols), g), t);
    auto d = randn(size_t(rows * cols), g);
    dst.upload(d);
    std::vector<int32_t> idx(static_cast<size_t>(rows));
    std::iota(idx.begin(), idx.end(), 0);
    std::shuffle(idx.begin(), idx.end(), g);
    idx.resize(size_t(n));  // distinct destinations
    auto w = randn(size_t(n), g);
    DevBuf didx = to_device(idx), dw = to_device(w);
    cuda::ScatterAddRowsParams p{src.p, cols, t, didx.as<int32_t>(), dw.as<float>(), dst.as<float>(), cols, n, cols};
    CUDA_OK(cuda::scatter_add_rows(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref = d;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < cols; ++c)
        ref[size_t(idx[size_t(i)] * cols + c)] += w[size_t(i)] * s[size_t(i * cols + c)];
    EXPECT_LT(rel_err(dst.download<float>(size_t(rows * cols)), ref), 2e-6);
  }
}

TEST(CudaBiasAdd, AddsTheBiasToEveryRow) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (DType t : {DType::F32, DType::BF16}) {
    const int64_t n = 9, cols = 640, ld = 700;
    DevBuf y(size_t(n * ld) * dtype_size(t));
    auto v = upload_as(y, randn(size_t(n * ld), g), t);
    auto b = randn(size_t(cols), g);
    DevBuf db = to_device(b);
    cuda::BiasAddParams p{y.p, ld, t, db.as<float>(), n, cols};
    CUDA_OK(cuda::bias_add(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref = v;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < cols; ++c) ref[size_t(r * ld + c)] += b[size_t(c)];
    if (t == DType::BF16) ref = round_bf16(ref);
    EXPECT_LT(rel_err(download_f32(y, t, size_t(n * ld)), ref), t == DType::F32 ? 1e-7 : 1e-6);
  }
}

TEST(CudaHeadRMSNorm, NormsEachHeadOfAStridedView) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (DType t : {DType::F32, DType::BF16}) {
    for (int64_t hd : {32, 128}) {
      // k heads inside a fused q|k|v row: the view starts at column qd, row stride qd + 2 kvd.
      const int64_t T = 7, nq = 4, nk = 2, ld = (nq + 2 * nk) * hd, c0 = nq * hd;
      DevBuf x(size_t(T * ld) * dtype_size(t));
      auto v = upload_as(x, randn(size_t(T * ld), g, 3.0f), t);
      auto w = randn(size_t(hd), g);
      DevBuf dw = to_device(w);
      uint8_t* base = static_cast<uint8_t*>(x.p) + size_t(c0) * dtype_size(t);
      cuda::HeadRMSNormParams p{base, ld, t, dw.as<float>(), 1e-6f, T, nk, hd};
      CUDA_OK(cuda::head_rmsnorm(p, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<float> ref = v;
      for (int64_t r = 0; r < T; ++r) {
        float* row = ref.data() + r * ld + c0;
        cpu::rmsnorm(row, hd, nk, hd, w.data(), 1e-6f, row, hd);
      }
      if (t == DType::BF16) ref = round_bf16(ref);
      EXPECT_LT(rel_err(download_f32(x, t, size_t(T * ld)), ref), tol_for(t)) << "hd " << hd;
    }
  }
}

}  // namespace
}  // namespace gale
