// The forward pass against transformers: logits, per-position argmax and chunked prefill
// on every fixture checkpoint (tools/fixtures/gen_model_fixtures.py made them with HF).
#include <gtest/gtest.h>

#include <cmath>

#include "model/model_loader.h"
#include "runtime/sampler.h"
#include "test_util.h"

using namespace gale;

namespace {

struct Run {
  std::vector<float> logits;  // [rows, vocab]
};

std::vector<int32_t> reversed_block_table(int64_t n_tokens, int64_t bs) {
  std::vector<int32_t> t(size_t((n_tokens + bs - 1) / bs));
  // A scrambled table: blocks need not be contiguous or in order.
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(t.size() - 1 - i);
  return t;
}

class ModelFixture : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return test::fixtures_dir() + "/models/" + GetParam(); }
};

TEST_P(ModelFixture, LogitsAndArgmaxMatchTransformers) {
  auto ref = test::read_json(dir() + "/reference.json");
  std::vector<int32_t> ids = ref["prompt_ids"].get<std::vector<int32_t>>();
  LoadedModel lm = load_model(dir(), ActDType::F32);
  Transformer& m = *lm.model;
  const int64_t V = m.config().vocab_size, bs = 16;
  KVCache kv(m.config(), int64_t(ids.size() + bs - 1) / bs, bs, m.kv_format());
  auto table = reversed_block_table(int64_t(ids.size()), bs);
  SeqStep s{ids, 0, table, SeqStep::Logits::All};
  std::vector<float> logits;
  m.forward({&s, 1}, kv, logits);
  ASSERT_EQ(logits.size(), ids.size() * size_t(V));

  auto last_ref = ref["last_logits"].get<std::vector<float>>();
  const float* last = logits.data() + (ids.size() - 1) * size_t(V);
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < V; ++i) {
    ASSERT_TRUE(std::isfinite(last[i]));
    max_diff = std::max(max_diff, std::abs(double(last[i]) - double(last_ref[size_t(i)])));
    max_ref = std::max(max_ref, std::abs(double(last_ref[size_t(i)])));
  }
  // The CPU f32 path stays within ~5e-6 of transformers' float32 logits on every fixture
  // (3,000 positions included); 1e-5 lets a real regression show.
  EXPECT_LE(max_diff / max_ref, 1e-5) << "max|diff| " << max_diff << " max|ref| " << max_ref;

  auto argmax_ref = ref["argmax"].get<std::vector<int32_t>>();
  auto margin = ref["argmax_margin"].get<std::vector<double>>();
  int checked = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    // A position whose top two logits are closer than float rounding can tell apart is a tie.
    if (margin[p] < 1e-4 * max_ref) continue;
    ++checked;
    EXPECT_EQ(argmax({logits.data() + p * size_t(V), size_t(V)}), argmax_ref[p]) << "position " << p;
  }
  // Ties are rare: at least 99 % of the positions must be checked, or the test proves little.
  EXPECT_GE(checked, int(ids.size()) * 99 / 100);
}

TEST_P(ModelFixture, ChunkedPrefillEqualsOnePass) {
  auto ref = test::read_json(dir() + "/reference.json");
  std::vector<int32_t> ids = ref["prompt_ids"].get<std::vector<int32_t>>();
  ids.resize(100);
  LoadedModel lm = load_model(dir(), ActDType::F32);
  Transformer& m = *lm.model;
  const int64_t V = m.config().vocab_size, bs = 16;
  auto table = reversed_block_table(int64_t(ids.size()), bs);
  std::vector<float> one, chunked;
  {
    KVCache kv(m.config(), int64_t(table.size()), bs, m.kv_format());
    SeqStep s{ids, 0, table, SeqStep::Logits::Last};
    m.forward({&s, 1}, kv, one);
  }
  KVCache kv(m.config(), int64_t(table.size()), bs, m.kv_format());
  for (size_t pos = 0; pos < ids.size();) {
    size_t n = std::min<size_t>(7 + pos % 5, ids.size() - pos);  // uneven chunks across block edges
    SeqStep s{std::span<const int32_t>(ids).subspan(pos, n), int64_t(pos), table, SeqStep::Logits::Last};
    m.forward({&s, 1}, kv, chunked);
    pos += n;
  }
  ASSERT_EQ(one.size(), size_t(V));
  ASSERT_EQ(chunked.size(), size_t(V));
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < V; ++i) {
    max_diff = std::max(max_diff, double(std::abs(one[size_t(i)] - chunked[size_t(i)])));
    max_ref = std::max(max_ref, double(std::abs(one[size_t(i)])));
  }
  EXPECT_LE(max_diff / max_ref, 1e-5);
}

TEST_P(ModelFixture, Bf16ActivationsAgreeOnClearArgmax) {
  auto ref = test::read_json(dir() + "/reference.json");
  std::vector<int32_t> ids = ref["prompt_ids"].get<std::vector<int32_t>>();
  LoadedModel lm = load_model(dir(), ActDType::BF16);
  Transformer& m = *lm.model;
  const int64_t V = m.config().vocab_size, bs = 16;
  auto table = reversed_block_table(int64_t(ids.size()), bs);
  KVCache kv(m.config(), int64_t(table.size()), bs, m.kv_format());
  EXPECT_EQ(kv.dtype(), DType::BF16);
  SeqStep s{ids, 0, table, SeqStep::Logits::All};
  std::vector<float> logits;
  m.forward({&s, 1}, kv, logits);
  auto argmax_ref = ref["argmax"].get<std::vector<int32_t>>();
  auto margin = ref["argmax_margin"].get<std::vector<double>>();
  // bf16 keeps 8 mantissa bits, so near-ties may flip (and MoE routing with them); positions
  // whose winner leads by a clear margin must agree.
  int clear = 0, agree = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    if (margin[p] < 0.5) continue;
    ++clear;
    agree += argmax({logits.data() + p * size_t(V), size_t(V)}) == argmax_ref[p];
  }
  ASSERT_GT(clear, 50);
  EXPECT_GE(double(agree) / clear, 0.95) << agree << " of " << clear;
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, ModelFixture, ::testing::ValuesIn(test::model_fixture_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (!isalnum(uint8_t(ch))) ch = '_';
                           return n;
                         });

TEST(ModelFixtures, AllArchitecturesAndDtypesPresent) {
  auto names = test::model_fixture_names();
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3", "mixtral"})
    for (const char* dt : {"f32", "f16", "bf16"})
      EXPECT_NE(std::find(names.begin(), names.end(), std::string(arch) + "-" + dt), names.end()) << arch << "-" << dt;
}

}  // namespace
