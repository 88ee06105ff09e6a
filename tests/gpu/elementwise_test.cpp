// Element-wise CUDA kernels against the CPU kernels (kernels/cpu/ops.h) and scalar loops.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/argmax.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/kv_cache_write.cuh"
#include "kernels/cuda/rmsnorm_residual.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/rope_kv_write.cuh"
#include "kernels/cuda/silu_mul.cuh"

namespace gale {
namespace {

using namespace gale::test;

TEST(CudaEmbedding, MatchesCpuForEveryTableAndOutputDtype) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const int64_t vocab = 1003, hidden = 771, n = 37;
  auto tab = randn(size_t(vocab * hidden), g);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(g() % vocab);
  ids[0] = int32_t(vocab - 1);
  DevBuf d_ids = to_device(ids);
  for (DType tt : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint8_t> raw(size_t(vocab * hidden) * dtype_size(tt));
    for (size_t i = 0; i < tab.size(); ++i) {
      if (tt == DType::F32) std::memcpy(raw.data() + 4 * i, &tab[i], 4);
      else {
        uint16_t h = tt == DType::F16 ? f32_to_f16(tab[i]) : f32_to_bf16(tab[i]);
        std::memcpy(raw.data() + 2 * i, &h, 2);
      }
    }
    DevBuf d_tab = to_device(raw);
    std::vector<float> ref(static_cast<size_t>(n * hidden));
    cpu::embedding(ids.data(), n, raw.data(), tt, hidden, ref.data());
    for (DType ot : {DType::F32, DType::BF16}) {
      DevBuf d_out(size_t(n * hidden) * dtype_size(ot));
      cuda::EmbeddingParams p{d_ids.as<int32_t>(), n, d_tab.p, tt, vocab, hidden, d_out.p, ot, hidden};
      CUDA_OK(cuda::embedding(p, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      auto out = download_f32(d_out, ot, size_t(n * hidden));
      // A gather is exact: f32 out equals the widened table; bf16 out is its rounding.
      EXPECT_EQ(rel_err(out, ot == DType::F32 ? ref : round_bf16(ref)), 0.0) << dtype_name(tt) << "->" << dtype_name(ot);
    }
  }
}

struct NormCase { int64_t n, d; bool add; DType xt, rt, ot; };

TEST(CudaRMSNormResidual, MatchesCpuAddThenNorm) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const NormCase cases[] = {
      {1, 37, true, DType::F32, DType::F32, DType::F32},       {7, 768, true, DType::BF16, DType::F32, DType::BF16},
      {33, 5125, true, DType::F32, DType::F32, DType::BF16},   {5, 4096, false, DType::F32, DType::F32, DType::F32},
      {64, 128, false, DType::F32, DType::BF16, DType::BF16},  {3, 2049, true, DType::BF16, DType::BF16, DType::F32},
      // Vectorized path (no add, bf16 out, 16-byte aligned rows): 1, 2 and 4 groups per thread.
      {9, 4096, false, DType::F32, DType::F32, DType::BF16},   {4, 8192, false, DType::F32, DType::BF16, DType::BF16},
      {3, 1000, false, DType::F32, DType::F32, DType::BF16},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " d=" << c.d << " add=" << c.add);
    const bool vec = !c.add && c.d % 8 == 0;  // aligned strides: the vectorized kernel may take it
    const int64_t ldx = c.d + 3, ldr = c.d + (vec ? 8 : 5), ldo = c.d + (vec ? 8 : 1);  // strided rows
    DevBuf d_x(size_t(c.n * ldx) * dtype_size(c.xt)), d_r(size_t(c.n * ldr) * dtype_size(c.rt)),
        d_o(size_t(c.n * ldo) * dtype_size(c.ot));
    auto x = upload_as(d_x, randn(size_t(c.n * ldx), g), c.xt);
    auto r = upload_as(d_r, randn(size_t(c.n * ldr), g, 3.0f), c.rt);
    auto w = randn(size_t(c.d), g);
    DevBuf d_w = to_device(w);
    cuda::RMSNormParams p{c.add ? d_x.p : nullptr, c.xt, ldx, d_r.p, c.rt, ldr, d_w.as<float>(), 1e-5f,
                          d_o.p, c.ot, ldo, c.n, c.d};
    CUDA_OK(cuda::rmsnorm_residual(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    // Reference: residual += x (rounded to the residual dtype), then cpu::rmsnorm.
    std::vector<float> rref(static_cast<size_t>(c.n * c.d)), rout(static_cast<size_t>(c.n * c.d)), ref(static_cast<size_t>(c.n * c.d));
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t j = 0; j < c.d; ++j) {
        float v = r[size_t(i * ldr + j)] + (c.add ? x[size_t(i * ldx + j)] : 0.0f);
        rref[size_t(i * c.d + j)] = c.rt == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
      }
    cpu::rmsnorm(rref.data(), c.d, c.n, c.d, w.data(), 1e-5f, ref.data(), c.d);
    auto o = download_f32(d_o, c.ot, size_t(c.n * ldo));
    auto rr = download_f32(d_r, c.rt, size_t(c.n * ldr));
    std::vector<float> out(static_cast<size_t>(c.n * c.d));
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t j = 0; j < c.d; ++j) {
        out[size_t(i * c.d + j)] = o[size_t(i * ldo + j)];
        rout[size_t(i * c.d + j)] = rr[size_t(i * ldr + j)];
      }
    EXPECT_LT(rel_err(out, ref), tol_for(c.ot));
    EXPECT_LT(rel_err(rout, rref), c.rt == DType::F32 ? 1e-7 : 1e-3);  // residual written back
    // The padding between rows is untouched (still NaN).
    if (c.d + 1 <= ldo) {
      EXPECT_TRUE(std::isnan(o[size_t(c.d)]));
    }
  }
}

TEST(CudaRope, MatchesCpuRotateHalf) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t T, hq, hk, hd, rot; DType t; };
  for (const C c : {C{13, 8, 2, 64, 64, DType::F32}, C{1, 32, 8, 128, 128, DType::BF16}, C{29, 4, 4, 128, 32, DType::F32},
                    C{7, 6, 0, 256, 256, DType::BF16}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " hd=" << c.hd << " rot=" << c.rot);
    const int64_t ldq = c.hq * c.hd + 8, ldk = std::max<int64_t>(1, c.hk * c.hd);
    DevBuf dq(size_t(c.T * ldq) * dtype_size(c.t)), dk(size_t(c.T * ldk) * dtype_size(c.t));
    auto q = upload_as(dq, randn(size_t(c.T * ldq), g), c.t);
    auto k = upload_as(dk, randn(size_t(c.T * ldk), g), c.t);
    std::vector<float> cs(static_cast<size_t>(c.T * c.rot / 2)), sn(cs.size());
    std::uniform_real_distribution<float> ang(-30.0f, 30.0f);
    for (size_t i = 0; i < cs.size(); ++i) { float a = ang(g); cs[i] = std::cos(a); sn[i] = std::sin(a); }
    DevBuf dc = to_device(cs), ds = to_device(sn);
    cuda::RopeParams p{dq.p, ldq, c.hq, c.hk ? dk.p : nullptr, ldk, c.hk, c.t, c.T, c.hd, c.rot, dc.as<float>(), ds.as<float>()};
    CUDA_OK(cuda::rope_apply(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    cpu::rope_apply(q.data(), ldq, c.T, c.hq, c.hd, c.rot, cs.data(), sn.data());
    if (c.hk) cpu::rope_apply(k.data(), ldk, c.T, c.hk, c.hd, c.rot, cs.data(), sn.data());
    if (c.t == DType::BF16) { q = round_bf16(q); k = round_bf16(k); }
    auto oq = download_f32(dq, c.t, size_t(c.T * ldq));
    for (int64_t t = 0; t < c.T; ++t)  // the row padding was not rotated: compare it too
      for (int64_t i = c.hq * c.hd; i < ldq; ++i) EXPECT_EQ(oq[size_t(t * ldq + i)], q[size_t(t * ldq + i)]);
    EXPECT_LT(rel_err(oq, q), c.t == DType::F32 ? 1e-6 : 1e-6 + 4e-3);
    if (c.hk) {
      EXPECT_LT(rel_err(download_f32(dk, c.t, size_t(c.T * ldk)), k), c.t == DType::F32 ? 1e-6 : 4e-3);
    }
  }
}

// The fused kernel against its two parts (each tested against the CPU above/below): bit-exact.
TEST(CudaRopeKVWrite, EqualsRopeThenCacheWrite) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t T, hq, hk, hd, rot; DType t, ct; };
  for (const C c : {C{1, 32, 8, 128, 128, DType::BF16, DType::BF16}, C{9, 8, 2, 64, 32, DType::F32, DType::BF16},
                    C{5, 4, 4, 64, 64, DType::BF16, DType::F32}, C{7, 8, 2, 128, 128, DType::BF16, DType::F8_E4M3},
                    C{3, 4, 2, 64, 32, DType::BF16, DType::F8_E4M3}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " hd=" << c.hd << " rot=" << c.rot);
    const int64_t bs = 16, row = c.hk * c.hd, ld = (c.hq + 2 * c.hk) * c.hd + 8, cache_rows = 4 * bs;
    const auto qkv0 = randn(size_t(c.T * ld), g);
    std::vector<float> cs(size_t(c.T * c.rot / 2)), sn(cs.size());
    std::uniform_real_distribution<float> ang(-30.0f, 30.0f);
    for (size_t i = 0; i < cs.size(); ++i) { float a = ang(g); cs[i] = std::cos(a); sn[i] = std::sin(a); }
    std::vector<int32_t> slots(size_t(c.T));
    for (int64_t t = 0; t < c.T; ++t) slots[size_t(t)] = int32_t((t * 7 + 3) % cache_rows);
    slots.back() = -1;  // a padding token: rotated, not cached
    DevBuf dc = to_device(cs), ds = to_device(sn), dslots = to_device(slots);
    std::vector<std::vector<uint8_t>> got;
    for (bool fused : {false, true}) {
      DevBuf dqkv(size_t(c.T * ld) * dtype_size(c.t));
      upload_as(dqkv, qkv0, c.t);
      const size_t cb = size_t(cache_rows * row) * dtype_size(c.ct);
      DevBuf kc(cb), vc(cb);
      CUDA_OK(cudaMemset(kc.p, 0xFF, cb));
      CUDA_OK(cudaMemset(vc.p, 0xFF, cb));
      const size_t es = dtype_size(c.t);
      uint8_t* q = static_cast<uint8_t*>(dqkv.p);
      uint8_t* k = q + size_t(c.hq * c.hd) * es;
      uint8_t* v = k + size_t(row) * es;
      cuda::RopeParams rp{q, ld, c.hq, k, ld, c.hk, c.t, c.T, c.hd, c.rot, dc.as<float>(), ds.as<float>()};
      cuda::KVCacheWriteParams wp{k, ld, v, ld, c.t, kc.p, vc.p, c.ct, dslots.as<int32_t>(), c.T, row, 0.013f, 0.0041f};
      if (fused) {
        CUDA_OK(cuda::rope_kv_write({rp, wp}, nullptr));
      } else {
        CUDA_OK(cuda::rope_apply(rp, nullptr));
        CUDA_OK(cuda::kv_cache_write(wp, nullptr));
      }
      CUDA_OK(cudaDeviceSynchronize());
      got.push_back(dqkv.download<uint8_t>(size_t(c.T * ld) * es));
      got.push_back(kc.download<uint8_t>(cb));
      got.push_back(vc.download<uint8_t>(cb));
    }
    EXPECT_EQ(got[3], got[0]) << "q|k|v after";
    EXPECT_EQ(got[4], got[1]) << "K cache";
    EXPECT_EQ(got[5], got[2]) << "V cache";
  }
}

TEST(CudaSiluMul, MatchesCpuOnGateUpHalves) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  struct C { int64_t n, d; DType it, ot; };
  for (const C c : {C{5, 777, DType::F32, DType::F32}, C{1, 11008, DType::BF16, DType::BF16}, C{33, 1536, DType::F32, DType::BF16}}) {
    SCOPED_TRACE(testing::Message() << "n=" << c.n << " d=" << c.d);
    // One gate_up buffer [n, 2d]: gate is the first half of each row, up the second.
    DevBuf dgu(size_t(c.n * 2 * c.d) * dtype_size(c.it)), dout(size_t(c.n * c.d) * dtype_size(c.ot));
    auto gu = upload_as(dgu, randn(size_t(c.n * 2 * c.d), g, 4.0f), c.it);
    const size_t es = dtype_size(c.it);
    cuda::SiluMulParams p{dgu.p, 2 * c.d, static_cast<uint8_t*>(dgu.p) + c.d * es, 2 * c.d, c.it, dout.p, c.d, c.ot, c.n, c.d};
    CUDA_OK(cuda::silu_mul(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref = gu;
    cpu::silu_mul(ref.data(), 2 * c.d, gu.data() + c.d, 2 * c.d, c.n, c.d);
    std::vector<float> r2(static_cast<size_t>(c.n * c.d));
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t j = 0; j < c.d; ++j) r2[size_t(i * c.d + j)] = ref[size_t(i * 2 * c.d + j)];
    EXPECT_LT(rel_err(download_f32(dout, c.ot, size_t(c.n * c.d)), r2), tol_for(c.ot));
  }
}

// The interleaved gate|up layout (groups of four) gives bit for bit what the halves layout gives.
TEST(CudaSiluMul, InterleavedGroupsOfFourEqualHalves) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (const int64_t n : {int64_t(1), int64_t(19)})
    for (const int64_t d : {int64_t(4), int64_t(1028), int64_t(14336)}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " d=" << d);
      const auto gu = round_bf16(randn(size_t(n * 2 * d), g, 4.0f));  // [gate | up] rows
      std::vector<float> il(gu.size());
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < d; ++j) {
          il[size_t(r * 2 * d + (j / 4) * 8 + j % 4)] = gu[size_t(r * 2 * d + j)];
          il[size_t(r * 2 * d + (j / 4) * 8 + 4 + j % 4)] = gu[size_t(r * 2 * d + d + j)];
        }
      DevBuf dh = to_device(to_bf16(gu)), di = to_device(to_bf16(il));
      DevBuf oh(size_t(n * d) * 2), oi(size_t(n * d) * 2);
      cuda::SiluMulParams ph{dh.p, 2 * d, static_cast<uint16_t*>(dh.p) + d, 2 * d, DType::BF16, oh.p, d, DType::BF16, n, d};
      cuda::SiluMulParams pi{di.p, 2 * d, nullptr, 0, DType::BF16, oi.p, d, DType::BF16, n, d};
      pi.group = 4;
      CUDA_OK(cuda::silu_mul(ph, nullptr));
      CUDA_OK(cuda::silu_mul(pi, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(oi.download<uint16_t>(size_t(n * d)), oh.download<uint16_t>(size_t(n * d)));
    }
  // In place over its own input, or a group other than 4, is refused.
  DevBuf b(64 * 2);
  cuda::SiluMulParams bad{b.p, 16, nullptr, 0, DType::BF16, b.p, 8, DType::BF16, 1, 8};
  bad.group = 4;
  EXPECT_EQ(cuda::silu_mul(bad, nullptr), cudaErrorInvalidValue);
  bad.out = static_cast<uint16_t*>(b.p) + 32;
  bad.group = 2;
  EXPECT_EQ(cuda::silu_mul(bad, nullptr), cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST(CudaKVCacheWrite, MatchesCpuPagedWrite) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  const int64_t bs = 16, nkv = 4, hd = 64, row = nkv * hd, nblocks = 9, T = 37, start = 21;
  std::vector<int32_t> table = {7, 2, 5, 0, 8};  // out of order
  // E4M3: scales that put |x| ~ 3 at the top of the format and push the largest K past it
  // (saturating at 448), the smallest V into subnormals: the CPU's rounding, bit for bit.
  const float k_scale = 2.5f / 448.0f, v_scale = 0.3f;
  for (DType ct : {DType::F32, DType::BF16, DType::F8_E4M3}) {
    SCOPED_TRACE(dtype_name(ct));
    auto k = randn(size_t(T * row), g), v = randn(size_t(T * row), g);
    std::vector<uint8_t> kc(size_t(nblocks * bs * row) * dtype_size(ct), 0xFF), vc = kc;
    cpu::paged_kv_write(k.data(), row, v.data(), row, T, start,
                        cpu::PagedKV{kc.data(), vc.data(), ct, bs, nkv, hd, k_scale, v_scale}, table);
    std::vector<int32_t> slots(T + 1);
    for (int64_t t = 0; t < T; ++t) slots[size_t(t)] = table[size_t((start + t) / bs)] * int32_t(bs) + int32_t((start + t) % bs);
    slots[size_t(T)] = -1;  // a padding token
    DevBuf dk = to_device(k), dv = to_device(v), dslots = to_device(slots);
    DevBuf dkc(kc.size()), dvc(vc.size());
    cuda::KVCacheWriteParams p{dk.p, row, dv.p, row, DType::F32, dkc.p, dvc.p, ct, dslots.as<int32_t>(), T + 1, row,
                               k_scale, v_scale};
    // The padding token's source row would be read past k's end if it were not skipped.
    p.n_tokens = T + 1;
    CUDA_OK(cuda::kv_cache_write(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(dkc.download<uint8_t>(kc.size()), kc);  // bit-exact, untouched slots still 0xFF
    EXPECT_EQ(dvc.download<uint8_t>(vc.size()), vc);
  }
}

TEST(CudaArgmax, FirstMaximumLikeTorch) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  for (int64_t vocab : {int64_t(151936), int64_t(32001), int64_t(7)}) {
    const int64_t n = 5, ld = vocab + 2;
    auto x = randn(size_t(n * ld), g);
    // Row 1: a tie between two maxima; the first must win.
    x[size_t(ld + vocab - 1)] = 100.0f;
    x[size_t(ld + vocab / 2)] = 100.0f;
    // Row 2: all negative with NaNs sprinkled in (never chosen); row 3: -0 and +0 maxima tie.
    for (int64_t i = 0; i < vocab; ++i) {
      x[size_t(2 * ld + i)] = i % 3 == 0 ? NAN : -1.0f - float(i % 97);
      x[size_t(3 * ld + i)] = -1.0f;
    }
    x[size_t(3 * ld + vocab - 1)] = 0.0f;
    x[size_t(3 * ld + vocab / 3)] = -0.0f;
    for (DType t : {DType::F32, DType::BF16}) {
      DevBuf dx(size_t(n * ld) * dtype_size(t));
      auto xv = upload_as(dx, x, t);
      DevBuf dout(size_t(n) * 4);
      DevBuf ws(cuda::argmax_workspace_size(n));
      CUDA_OK(cudaMemset(ws.p, 0, cuda::argmax_workspace_size(n)));
      // One block per row, then the row split over blocks (twice: the workspace must come back zeroed).
      for (void* w : {static_cast<void*>(nullptr), ws.p, ws.p}) {
        CUDA_OK(cudaMemset(dout.p, 0xff, size_t(n) * 4));
        cuda::ArgmaxParams p{dx.p, t, ld, n, vocab, dout.as<int32_t>(), w};
        CUDA_OK(cuda::argmax(p, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        auto out = dout.download<int32_t>(size_t(n));
        for (int64_t r = 0; r < n; ++r) {
          const float* row = xv.data() + r * ld;
          int32_t ref = 0;  // first maximum, NaNs skipped
          for (int64_t i = 0; i < vocab; ++i)
            if (!std::isnan(row[i]) && (std::isnan(row[ref]) || row[i] > row[ref])) ref = int32_t(i);
          EXPECT_EQ(out[size_t(r)], ref) << "row " << r << " vocab " << vocab << " " << dtype_name(t) << (w ? " split" : "");
        }
      }
    }
  }
}

}  // namespace
}  // namespace gale
