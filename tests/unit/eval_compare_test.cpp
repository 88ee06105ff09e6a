// gale eval's figures (engine/eval_compare.h): KL divergence and top-1 agreement against values
// worked out by hand, and whole runs over fixture models (against themselves: exactly zero).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "engine/eval_compare.h"
#include "model/model_loader.h"
#include "test_util.h"

using namespace gale;

namespace {

TEST(EvalCompare, KlAndTop1OnTinyRows) {
  // p = (1/2, 1/2), q = (1/4, 3/4): KL(p || q) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
  // The reference's tie goes to the lower id.
  const float ref2[] = {0.f, 0.f}, mod2[] = {0.f, float(std::log(3.0))};
  RowComparison c = compare_rows(ref2, mod2, 2);
  EXPECT_NEAR(c.kl, 0.5 * std::log(4.0 / 3.0), 1e-7);  // ln 3 rounded to float
  EXPECT_EQ(c.reference_top1, 0);
  EXPECT_EQ(c.top1, 1);

  // Reversed rows share their normalizer, so KL = sum p (x - y) = 2 (p2 - p0) exactly, with
  // p = softmax(0, 1, 2) = (1, e, e^2) / (1 + e + e^2).
  const float ref3[] = {0.f, 1.f, 2.f}, mod3[] = {2.f, 1.f, 0.f};
  const double e = std::exp(1.0), z = 1 + e + e * e;
  c = compare_rows(ref3, mod3, 3);
  EXPECT_NEAR(c.kl, 2 * (e * e / z - 1 / z), 1e-12);
  EXPECT_NEAR(c.kl, 1.150420765208883, 1e-12);
  EXPECT_EQ(c.reference_top1, 2);
  EXPECT_EQ(c.top1, 0);
  // The other direction is a different number: KL is not symmetric in general (here it is,
  // by the mirror symmetry), and a shift of either row changes nothing.
  const float mod3_shifted[] = {102.f, 101.f, 100.f};
  EXPECT_NEAR(compare_rows(ref3, mod3_shifted, 3).kl, c.kl, 1e-12);
  EXPECT_NEAR(compare_rows(mod3, ref3, 3).kl, c.kl, 1e-12);

  // Identical rows: exactly zero, the same argmax.
  const float same[] = {-3.5f, 7.25f, 7.0f, 0.f};
  c = compare_rows(same, same, 4);
  EXPECT_EQ(c.kl, 0.0);
  EXPECT_EQ(c.top1, 1);
  EXPECT_EQ(c.reference_top1, 1);

  // Far-apart logits neither overflow nor lose the answer: p ~ (1, e^-100), q ~ (e^-100, 1),
  // KL ~ 100 - 1 (ln q0 = -100 - ln(1 + e^-100) and the e^-100 terms vanish in double).
  const float big_ref[] = {100.f, 0.f}, big_mod[] = {0.f, 100.f};
  c = compare_rows(big_ref, big_mod, 2);
  EXPECT_TRUE(std::isfinite(c.kl));
  EXPECT_NEAR(c.kl, 100.0, 1e-9);
}

TEST(EvalCompare, Quantile) {
  std::vector<double> v = {5, 1, 4, 2, 3};
  EXPECT_DOUBLE_EQ(quantile(v, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(quantile(v, 0.5), 3.0);
  EXPECT_DOUBLE_EQ(quantile(v, 0.99), 4.96);  // position 0.99 * 4 = 3.96 between 4 and 5
  EXPECT_DOUBLE_EQ(quantile(v, 1.0), 5.0);
  std::vector<double> one = {0.25}, none;
  EXPECT_DOUBLE_EQ(quantile(one, 0.99), 0.25);
  EXPECT_DOUBLE_EQ(quantile(none, 0.99), 0.0);
}

std::string fixture(const std::string& name) { return test::fixtures_dir() + "/models/" + name; }

std::vector<int32_t> some_ids(int n, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((i * 7919 + 13) % vocab));
  return ids;
}

BackendOptions cpu() {
  BackendOptions b;
  b.device = "cpu";
  return b;
}

// Against itself (a second load of the same folder): every KL exactly 0, every argmax the
// same, and both perplexities perplexity()'s own figure, bit for bit.
TEST(EvalCompare, ModelAgainstItself) {
  LoadedModel a = load_model(fixture("llama-f32"), cpu()), b = load_model(fixture("llama-f32"), cpu());
  const std::vector<int32_t> ids = some_ids(70, 384);
  for (auto [ctx, stride] : {std::pair{16, 8}, std::pair{16, 16}, std::pair{100, 50}, std::pair{9, 4}}) {
    EvalResult r = eval_compare(*a.model, *b.model, ids, ctx, stride);
    const PerplexityResult p = perplexity(*a.model, ids, ctx, stride);
    EXPECT_EQ(r.kl_mean, 0.0);
    EXPECT_EQ(r.kl_max, 0.0);
    EXPECT_EQ(r.kl_p99, 0.0);
    EXPECT_EQ(r.top1_agreement, 1.0);
    EXPECT_EQ(r.same_top1, r.positions);
    // Every token after the first is scored once; windows that do not overlap (stride == ctx)
    // leave their own first token unscored, as the guide does.
    EXPECT_EQ(r.positions, int64_t(ids.size()) - (stride < ctx ? 1 : r.windows)) << ctx << " " << stride;
    EXPECT_EQ(r.model.ppl, p.ppl);
    EXPECT_EQ(r.reference.ppl, p.ppl);
    EXPECT_EQ(r.model.scored_tokens, p.scored_tokens);
    EXPECT_EQ(r.windows, p.windows);
    EXPECT_GT(p.ppl, 1.0);
  }
}

// Quantize-at-load against the same checkpoint as stored: a small, positive divergence, and the
// model's perplexity is still perplexity()'s for the quantized model.
TEST(EvalCompare, Fp8AgainstStored) {
  LoadOptions fp8;
  fp8.quantization = "fp8";
  LoadedModel q = load_model(fixture("llama-bf16"), cpu(), fp8), ref = load_model(fixture("llama-bf16"), cpu());
  const std::vector<int32_t> ids = some_ids(70, 384);
  EvalResult r = eval_compare(*q.model, *ref.model, ids, 32, 16);
  EXPECT_GT(r.kl_mean, 0.0);
  EXPECT_LT(r.kl_mean, 0.05);
  EXPECT_GE(r.kl_max, r.kl_p99);
  EXPECT_GE(r.kl_p99, 0.0);
  EXPECT_GT(r.top1_agreement, 0.8);
  EXPECT_LE(r.top1_agreement, 1.0);
  EXPECT_EQ(r.model.ppl, perplexity(*q.model, ids, 32, 16).ppl);
  EXPECT_EQ(r.reference.ppl, perplexity(*ref.model, ids, 32, 16).ppl);
  EXPECT_NE(r.model.ppl, r.reference.ppl);
}

TEST(EvalCompare, RefusesWhatItCannotCompare) {
  LoadedModel a = load_model(fixture("llama-f32"), cpu()), other = load_model("synthetic:tiny", cpu());
  const std::vector<int32_t> ids = some_ids(20, 384);
  EXPECT_THROW(check_comparable(*a.model, *other.model), Error);
  EXPECT_THROW(eval_compare(*a.model, *other.model, ids, 8, 4), Error);
  EXPECT_THROW(eval_compare(*a.model, *a.model, ids, 1, 1), Error);        // ctx < 2
  EXPECT_THROW(eval_compare(*a.model, *a.model, ids, 8, 9), Error);        // stride > ctx
  EXPECT_THROW(eval_compare(*a.model, *a.model, {ids.data(), 1}, 8, 4), Error);  // one token
}

}  // namespace
