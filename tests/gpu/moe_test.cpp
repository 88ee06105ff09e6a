// The MoE kernels of the CUDA backend against host transcriptions: moe_route (top-k ids and
// weights of the host path in Backend::moe_experts, ties to the lower expert; offsets and the
// expert-grouped, token-ordered permutation exactly), moe_grouped_gemm (each expert's rows times
// its own weight, uneven counts with empty, one-row and non-tile-multiple experts, the gather
// through x_rows) and moe_combine (the per-token weighted sum in ascending expert order).
#include <algorithm>
#include <climits>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/moe_grouped_gemm.cuh"
#include "kernels/cuda/moe_route.cuh"

namespace gale {
namespace {

using namespace gale::test;

struct HostRoute {
  std::vector<int32_t> ids, offsets, slot_of, perm_rows;
  std::vector<float> w;
};

// Backend::moe_experts' routing, then the grouping the kernels promise.
HostRoute host_route(const std::vector<float>& logits, int64_t ld, int64_t T, int64_t E, int64_t K, bool renorm) {
  HostRoute h;
  h.ids.resize(size_t(T * K));
  h.w.resize(size_t(T * K));
  std::vector<float> r(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) r[size_t(e)] = logits[size_t(t * ld + e)];
    float m = *std::max_element(r.begin(), r.end()), sum = 0;
    for (auto& v : r) sum += (v = std::exp(v - m));
    for (auto& v : r) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
      return r[size_t(a)] > r[size_t(b)] || (r[size_t(a)] == r[size_t(b)] && a < b);
    });
    float topsum = 0;
    for (int64_t k = 0; k < K; ++k) topsum += r[size_t(order[size_t(k)])];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = order[size_t(k)];
      h.ids[size_t(t * K + k)] = int32_t(e);
      h.w[size_t(t * K + k)] = renorm ? r[size_t(e)] / topsum : r[size_t(e)];
    }
  }
  h.offsets.assign(size_t(E + 1), 0);
  h.slot_of.resize(size_t(T * K));
  for (int64_t e = 0; e < E; ++e) {
    h.offsets[size_t(e + 1)] = h.offsets[size_t(e)];
    for (int64_t i = 0; i < T * K; ++i)
      if (h.ids[size_t(i)] == e) {
        h.slot_of[size_t(i)] = int32_t(h.perm_rows.size());
        h.perm_rows.push_back(int32_t(i / K));
        ++h.offsets[size_t(e + 1)];
      }
  }
  return h;
}

TEST(CudaMoeRoute, MatchesTheHostRoutingAndGroupsSlotsByExpertInTokenOrder) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct Case { int64_t T, E, K; bool renorm; };
  // Decode sizes, Mixtral / Qwen-MoE shapes, more slots than the permutation block (1024), the
  // largest E and K, and prefill chunks past 8192 tokens.
  for (const Case c : {Case{1, 8, 2, true}, Case{3, 8, 2, true}, Case{37, 8, 2, false}, Case{700, 60, 4, true},
                       Case{513, 256, 8, true}, Case{9000, 8, 2, true}, Case{50, 5, 5, true}, Case{200, 33, 1, false}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " E=" << c.E << " K=" << c.K);
    const int64_t ld = c.E + 3;
    // Logits from a coarse grid: many exact ties (equal logits give equal weights on both
    // sides, whatever the summation order) and gaps far above rounding elsewhere.
    std::vector<float> logits(size_t(c.T * ld), 1e30f);
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t e = 0; e < c.E; ++e) logits[size_t(t * ld + e)] = float(int(g() % 9) - 4) * 0.5f;
    const HostRoute h = host_route(logits, ld, c.T, c.E, c.K, c.renorm);
    const int64_t R = c.T * c.K;
    DevBuf dl = to_device(logits), ids(size_t(R) * 4), w(size_t(R) * 4), off(size_t(c.E + 1) * 4),
        slot(size_t(R) * 4), perm(size_t(R) * 4);
    cuda::MoeRouteParams p{dl.as<float>(), ld,        c.T,           c.E,           c.K,
                           c.renorm,       ids.as<int32_t>(), w.as<float>(), off.as<int32_t>(), slot.as<int32_t>(),
                           perm.as<int32_t>()};
    CUDA_OK(cuda::moe_route(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(ids.download<int32_t>(size_t(R)), h.ids);
    EXPECT_EQ(off.download<int32_t>(size_t(c.E + 1)), h.offsets);
    EXPECT_EQ(slot.download<int32_t>(size_t(R)), h.slot_of);
    EXPECT_EQ(perm.download<int32_t>(size_t(R)), h.perm_rows);
    const auto dw = w.download<float>(size_t(R));
    for (int64_t i = 0; i < R; ++i)
      ASSERT_NEAR(dw[size_t(i)], h.w[size_t(i)], 1e-5f * h.w[size_t(i)] + 1e-7f) << "slot " << i;
  }
}

TEST(CudaMoeRoute, RefusesShapesItCannotRoute) {
  GALE_REQUIRE_GPU();
  cuda::MoeRouteParams p{};
  p.T = 4;
  for (auto [E, K] : {std::pair<int64_t, int64_t>{300, 2}, {8, 9}, {4, 5}, {8, 0}}) {
    p.E = E;
    p.K = K;
    EXPECT_EQ(cuda::moe_route(p, nullptr), cudaErrorInvalidValue) << E << " " << K;
  }
}

// y rows of each expert against a host f32 product of the bf16 data.
void check_grouped_gemm(const std::vector<int32_t>& counts, int64_t N, int64_t K, bool gather, int64_t hint,
                        std::mt19937& g) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " K=" << K << " gather=" << gather << " hint=" << hint);
  const int64_t E = int64_t(counts.size());
  std::vector<int32_t> offsets(size_t(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) offsets[size_t(e + 1)] = offsets[size_t(e)] + counts[size_t(e)];
  const int64_t rows = offsets.back(), max_rows = rows + 5;  // slack rows: never written
  const int64_t x_rows_n = gather ? rows + 11 : max_rows, ldx = K + 8, ldw = K + 16, ldy = N + 8;
  DevBuf dx(size_t(x_rows_n * ldx) * 2), dy(size_t(max_rows * ldy) * 2);
  const auto x = upload_as(dx, randn(size_t(x_rows_n * ldx), g), DType::BF16);
  std::vector<int32_t> x_rows(static_cast<size_t>(max_rows));
  for (auto& r : x_rows) r = int32_t(g() % uint32_t(x_rows_n));
  DevBuf dxr = to_device(x_rows);
  // Experts without rows get a null weight: reading it would fault.
  std::vector<DevBuf> ws;
  std::vector<std::vector<float>> wh(static_cast<size_t>(E));
  std::vector<const void*> ptrs(static_cast<size_t>(E), nullptr);
  for (int64_t e = 0; e < E; ++e) {
    if (counts[size_t(e)] == 0) continue;
    ws.emplace_back(size_t(N * ldw) * 2);
    wh[size_t(e)] = upload_as(ws.back(), randn(size_t(N * ldw), g, 0.1f), DType::BF16);
    ptrs[size_t(e)] = ws.back().p;
  }
  DevBuf dptrs = to_device(ptrs), doff = to_device(offsets);
  cuda::GroupedGemmParams p{dx.p, ldx, gather ? dxr.as<int32_t>() : nullptr, dptrs.as<const void*>(), ldw,
                            doff.as<int32_t>(), dy.p, ldy, E, max_rows, N, K, hint};
  ASSERT_TRUE(cuda::moe_grouped_gemm_supported(p));
  CUDA_OK(cuda::moe_grouped_gemm(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const auto yraw = dy.download<uint16_t>(size_t(max_rows * ldy));
  for (int64_t e = 0; e < E; ++e) {
    if (counts[size_t(e)] == 0) continue;
    std::vector<float> out, ref;
    for (int64_t r = offsets[size_t(e)]; r < offsets[size_t(e + 1)]; ++r) {
      const int64_t xr = gather ? x_rows[size_t(r)] : r;
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(x[size_t(xr * ldx + k)]) * double(wh[size_t(e)][size_t(n * ldw + k)]);
        ref.push_back(float(s));
        out.push_back(bf16_to_f32(yraw[size_t(r * ldy + n)]));
      }
    }
    EXPECT_LT(rel_err(out, ref), tol_for(DType::BF16)) << "expert " << e << " (" << counts[size_t(e)] << " rows)";
  }
  for (int64_t r = rows; r < max_rows; ++r)
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(yraw[size_t(r * ldy + n)], 0xFFFF) << "row " << r << " past the experts";
}

TEST(CudaMoeGroupedGemm, EachExpertMultipliesItsOwnRows) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  // Decode-like (1-2 rows, empty experts), uneven prefill counts around the tile sizes (16, 64,
  // 128), N and K not multiples of the tiles; each tile shape forced through rows_hint.
  const std::vector<int32_t> decode = {0, 1, 0, 0, 2, 0, 1, 0};
  const std::vector<int32_t> uneven = {0, 1, 37, 0, 130, 16, 17, 64, 129, 3};
  for (int64_t hint : {int64_t(0), int64_t(1), int64_t(50), int64_t(500)}) {
    check_grouped_gemm(decode, 200, 328, true, hint, g);
    check_grouped_gemm(uneven, 200, 328, true, hint, g);
    check_grouped_gemm(uneven, 64, 96, false, hint, g);
  }
  // More experts than a warp scans at once, most of them empty.
  std::vector<int32_t> many(70, 0);
  many[3] = 5;
  many[40] = 1;
  many[69] = 33;
  check_grouped_gemm(many, 136, 64, true, 0, g);
}

TEST(CudaMoeGroupedGemm, RefusesUnalignedShapes) {
  GALE_REQUIRE_GPU();
  DevBuf b(4096);
  cuda::GroupedGemmParams p{b.p, 64, nullptr, static_cast<const void* const*>(b.p), 64, b.as<int32_t>(), b.p, 64,
                            2, 4, 64, 64, 0};
  EXPECT_TRUE(cuda::moe_grouped_gemm_supported(p));
  p.K = 60;
  EXPECT_FALSE(cuda::moe_grouped_gemm_supported(p));
  EXPECT_EQ(cuda::moe_grouped_gemm(p, nullptr), cudaErrorInvalidValue);
  p.K = 64;
  p.N = 66;
  EXPECT_FALSE(cuda::moe_grouped_gemm_supported(p));
}

TEST(CudaMoeCombine, AddsEachTokensExpertsInAscendingExpertOrder) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (DType t : {DType::BF16, DType::F32}) {
    const int64_t T = 45, K = 3, E = 7, cols = 300, ldy = 304, ldx = 310, R = T * K;
    std::vector<int32_t> ids(static_cast<size_t>(R)), slot(static_cast<size_t>(R));
    for (int64_t i = 0; i < T; ++i) {  // distinct experts per token, in no particular order
      std::vector<int32_t> e(static_cast<size_t>(E));
      std::iota(e.begin(), e.end(), 0);
      std::shuffle(e.begin(), e.end(), g);
      std::copy(e.begin(), e.begin() + K, ids.begin() + i * K);
    }
    std::iota(slot.begin(), slot.end(), 0);
    std::shuffle(slot.begin(), slot.end(), g);
    const auto w = randn(size_t(R), g);
    DevBuf dy(size_t(R * ldy) * dtype_size(t)), dx(size_t(T * ldx) * 4);
    const auto y = upload_as(dy, randn(size_t(R * ldy), g), t);
    auto x = randn(size_t(T * ldx), g);
    dx.upload(x);
    DevBuf di = to_device(ids), ds = to_device(slot), dw = to_device(w);
    cuda::MoeCombineParams p{dy.p, ldy, t, di.as<int32_t>(), dw.as<float>(), ds.as<int32_t>(), dx.as<float>(), ldx,
                             T, K, cols};
    CUDA_OK(cuda::moe_combine(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    for (int64_t i = 0; i < T; ++i) {
      std::vector<int64_t> ks(static_cast<size_t>(K));
      std::iota(ks.begin(), ks.end(), 0);
      std::sort(ks.begin(), ks.end(), [&](int64_t a, int64_t b) { return ids[size_t(i * K + a)] < ids[size_t(i * K + b)]; });
      for (int64_t c = 0; c < cols; ++c) {
        float acc = x[size_t(i * ldx + c)];
        for (int64_t k : ks)
          acc = std::fmaf(w[size_t(i * K + k)], y[size_t(int64_t(slot[size_t(i * K + k)]) * ldy + c)], acc);
        x[size_t(i * ldx + c)] = acc;
      }
    }
    EXPECT_EQ(dx.download<float>(size_t(T * ldx)), x);  // same fmaf chain: bit-exact (columns past cols untouched)
  }
}

}  // namespace
}  // namespace gale
