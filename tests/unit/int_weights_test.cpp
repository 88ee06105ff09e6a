// Integer weights from load to logits on the CPU (issue 18): the --quantization int8|int4
// transform (model/transforms.h quantize_int_weights) writes what model/int_quantize.h's
// quantize_int writes, in the layout Linear::integer_weights() accepts, honours --keep-16bit
// and --quantize-lm-head and keeps total_bytes; CpuBackend runs such matrices, act-order
// in_perm included, as kernels/ref's matmul_int defines the product; and a model quantized at
// load gives the logits of the same model with every such matrix dequantized to f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>

#include "kernels/ref/matmul_ref.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/cpu_backend.h"
#include "model/int_quantize.h"
#include "model/transformer.h"
#include "model/transforms.h"
#include "model/weights.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;

namespace {

struct Fixture {
  ModelConfig cfg;
  std::shared_ptr<SafeTensors> st;
  ModelWeights weights() const { return bind_weights(st, cfg); }
};

Fixture open_fixture(const std::string& name) {
  const std::string dir = test::fixtures_dir() + "/models/" + name;
  return {load_model_config(dir), std::make_shared<SafeTensors>(SafeTensors::open_dir(dir))};
}

IntQuantSpec spec_int8() { return {8, 0, true}; }
IntQuantSpec spec_int4() { return {4, 32, false}; }  // the fixture's rows are 64 or 128 wide

// The f32 matrix an integer Linear stands for (int_weight, the contract's definition).
std::vector<float> dequantized(const Linear& l, const IntQuantSpec& q) {
  std::vector<float> out(size_t(l.out * l.in));
  for (int64_t r = 0; r < l.out; ++r)
    for (int64_t c = 0; c < l.in; ++c)
      out[size_t(r * l.in + c)] = int_weight(static_cast<const uint8_t*>(l.w), static_cast<const float*>(l.scheme.scale),
                                              static_cast<const uint8_t*>(l.scheme.zero), q, l.in, r, c);
  return out;
}

TEST(QuantizeIntWeights, CodesAreQuantizeIntsAndBytesFollow) {
  const Fixture f = open_fixture("llama-f32");
  for (const IntQuantSpec q : {spec_int8(), spec_int4()}) {
    const ModelWeights before = f.weights();
    ModelWeights w = f.weights();
    ModelConfig cfg = f.cfg;
    const WeightTransform ts[] = {quantize_int_weights(q)};
    apply_transforms(ts, cfg, w);
    size_t expect_bytes = before.total_bytes;
    std::vector<const Linear*> old;
    for_each_projection(before, [&](const Linear& l) { old.push_back(&l); });
    size_t i = 0;
    for_each_projection(static_cast<const ModelWeights&>(w), [&](const Linear& l) {
      const Linear& o = *old[i++];
      ASSERT_TRUE(l.integer_weights()) << l.name;
      EXPECT_EQ(l.name, o.name);
      EXPECT_EQ(l.dtype, q.bits == 8 ? DType::I8 : DType::U8);
      EXPECT_EQ(l.scheme.zero != nullptr, !q.symmetric);
      const int64_t spr = int_scales_per_row(q, l.in), bpr = int_code_bytes_per_row(q, l.in);
      std::vector<uint8_t> codes(size_t(l.out * bpr)), zeros(size_t(l.out * spr));
      std::vector<float> scales(size_t(l.out * spr));
      quantize_int(o.w, o.dtype, o.out, o.in, o.row_stride(), q, nullptr, codes.data(), scales.data(), zeros.data());
      EXPECT_EQ(std::memcmp(codes.data(), l.w, codes.size()), 0) << l.name;
      EXPECT_EQ(std::memcmp(scales.data(), l.scheme.scale, scales.size() * 4), 0) << l.name;
      if (!q.symmetric) EXPECT_EQ(std::memcmp(zeros.data(), l.scheme.zero, zeros.size()), 0) << l.name;
      expect_bytes = expect_bytes - o.bytes() + l.bytes() + scales.size() * (q.symmetric ? 4 : 5);
    });
    EXPECT_EQ(w.total_bytes, expect_bytes);
    EXPECT_EQ(w.lm_head.w, before.lm_head.w);  // as stored without --quantize-lm-head
    EXPECT_NE(std::find(w.dtypes.begin(), w.dtypes.end(), q.bits == 8 ? "I8" : "U8"), w.dtypes.end());
  }
}

TEST(QuantizeIntWeights, Keep16BitAndLmHead) {
  const Fixture f = open_fixture("llama-f32");
  ModelWeights w = f.weights();
  ModelConfig cfg = f.cfg;
  const void* embed = w.embed;
  const DType embed_dtype = w.embed_dtype;
  const WeightTransform ts[] = {quantize_int_weights(spec_int4(), NamePatterns({"*.down_proj"}, "--keep-16bit"), true)};
  apply_transforms(ts, cfg, w);
  for (const LayerWeights& L : w.layers) {
    EXPECT_FALSE(L.down.integer_weights()) << L.down.name;
    EXPECT_TRUE(L.up.integer_weights()) << L.up.name;
  }
  EXPECT_TRUE(w.lm_head.integer_weights());
  EXPECT_EQ(w.embed, embed);  // the lookup table stays as stored
  EXPECT_EQ(w.embed_dtype, embed_dtype);

  ModelWeights w2 = f.weights();
  const WeightTransform bad[] = {quantize_int_weights(spec_int8(), NamePatterns({"*.no_such_proj"}, "--keep-16bit"))};
  try {
    apply_transforms(bad, cfg, w2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_proj"), std::string::npos) << e.what();
  }
}

// The model quantized at load against the same model with each integer matrix replaced by its
// f32 dequantization: the products are the same up to f32 summation, so the logits agree to
// ~1e-5 of their spread; a misplaced scale, zero point or nibble would not.
TEST(QuantizeIntWeights, LogitsAreTheDequantizedModels) {
  const Fixture f = open_fixture("llama-f32");
  const std::vector<int32_t> ids =
      test::read_json(test::fixtures_dir() + "/models/llama-f32/reference.json")["prompt_ids"].get<std::vector<int32_t>>();
  for (const IntQuantSpec q : {spec_int8(), spec_int4(), IntQuantSpec{4, 0, true}}) {
    ModelWeights w = f.weights();
    ModelConfig cfg = f.cfg;
    const WeightTransform ts[] = {quantize_int_weights(q, {}, true)};
    apply_transforms(ts, cfg, w);
    ModelWeights deq = w;
    for_each_linear(deq, [&](Linear& l) {
      if (!l.integer_weights()) return;
      auto buf = std::shared_ptr<float[]>(new float[size_t(l.out * l.in)]);
      const std::vector<float> v = dequantized(l, q);
      std::copy(v.begin(), v.end(), buf.get());
      l.w = buf.get();
      l.dtype = DType::F32;
      l.scheme = WeightScheme{};
      deq.owned.push_back(std::move(buf));
    });
    Transformer mq(cfg, std::move(w)), md(cfg, std::move(deq));
    const std::vector<float> a = test::all_logits(mq, ids), b = test::all_logits(md, ids);
    ASSERT_EQ(a.size(), b.size());
    const auto [lo, hi] = std::minmax_element(b.begin(), b.end());
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
    EXPECT_LE(worst, 1e-5 * (*hi - *lo)) << "bits=" << q.bits << " group=" << q.group;
  }
}

// CpuBackend::linear on an act-order matrix: stored column k holds input feature perm[k], so
// the product reads x[:, perm] (ref::matmul_int with in_perm); linear_fused of it beside a
// plain matrix gives each its own linear().
TEST(CpuBackendInt, ActOrderGathersX) {
  std::mt19937 rng(11);
  const int64_t M = 3, K = 256, N = 40;
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> wf(size_t(N * K)), x(size_t(M * K));
  for (float& v : wf) v = d(rng);
  for (float& v : x) v = d(rng);
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const IntQuantSpec q{4, 64, false};
  std::vector<uint8_t> codes(size_t(N * K / 2)), zeros(size_t(N * K / 64));
  std::vector<float> scales(zeros.size());
  quantize_int(wf.data(), DType::F32, N, K, K, q, nullptr, codes.data(), scales.data(), zeros.data());
  Linear l;
  l.w = codes.data();
  l.dtype = DType::U8;
  l.out = N;
  l.in = K;
  l.scheme.scales = WeightScheme::Scales::PerGroup;
  l.scheme.group = 64;
  l.scheme.scale = scales.data();
  l.scheme.zero = zeros.data();
  l.scheme.packing = WeightScheme::Packing::U4;
  l.scheme.in_perm = perm.data();
  l.name = "act_order";
  CpuBackend be(false);
  ASSERT_TRUE(l.integer_weights());
  ASSERT_TRUE(be.supports(l));
  std::vector<float> y(size_t(M * N)), yref(size_t(M * N));
  be.linear(l, Act{x.data(), DType::F32, M, K, K}, Act{y.data(), DType::F32, M, N, N}, false);
  ref::matmul_int(x.data(), K, M, K, codes.data(), 4, N, scales.data(), zeros.data(), 64, perm.data(), nullptr,
                  yref.data(), N);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], yref[i], 1e-4) << i;

  // Fused beside a plain f32 matrix (2 rows of all ones: the row sums of x).
  std::vector<float> ones(size_t(2 * K), 1.0f), yf(size_t(M * (N + 2)));
  Linear plain;
  plain.w = ones.data();
  plain.out = 2;
  plain.in = K;
  const Linear* ls[] = {&l, &plain};
  be.linear_fused(ls, Act{x.data(), DType::F32, M, K, K}, Act{yf.data(), DType::F32, M, N + 2, N + 2});
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(yf[size_t(m * (N + 2) + n)], y[size_t(m * N + n)]);
    const double sum = std::accumulate(x.begin() + m * K, x.begin() + (m + 1) * K, 0.0);
    EXPECT_NEAR(yf[size_t(m * (N + 2) + N)], sum, 1e-4);
  }
}

}  // namespace
