// Sampling: greedy, filters, penalties and seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "runtime/sampler.h"

using namespace gale;

namespace {

std::vector<float> logits_of(std::initializer_list<float> v) { return std::vector<float>(v); }

TEST(Sampler, GreedyTakesFirstMaximum) {
  Sampler s(SamplingParams{}, {});
  auto l = logits_of({1, 5, 5, 2});
  EXPECT_EQ(s.sample(l), 1);
}

TEST(Sampler, SameSeedSameOutputsDifferentSeedDiffers) {
  SamplingParams p;
  p.temperature = 1.0f;
  auto draw = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p, {});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l(50);
      for (int j = 0; j < 50; ++j) l[size_t(j)] = float((j * 37) % 11) * 0.1f;
      out.push_back(s.sample(l));
    }
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    p.seed = seed;
    Sampler s(p, {});
    auto l = logits_of({0.1f, 0.3f, 0.2f});
    EXPECT_EQ(s.sample(l), 1);
  }
}

TEST(Sampler, TopPAndMinPRestrictTheSupport) {
  // probabilities ~ 0.6, 0.3, 0.1 at temperature 1
  std::vector<float> base = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;  // keeps {0, 1}
  std::map<int, int> seen;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    p.seed = seed;
    Sampler s(p, {});
    auto l = base;
    seen[s.sample(l)]++;
  }
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_GT(seen[0], seen[1]);
  EXPECT_GT(seen[1], 50);
  p.top_p = 1.0f;
  p.min_p = 0.4f;  // 0.4 * 0.6 = 0.24: keeps {0, 1}
  seen.clear();
  for (uint64_t seed = 0; seed < 400; ++seed) {
    p.seed = seed;
    Sampler s(p, {});
    auto l = base;
    seen[s.sample(l)]++;
  }
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_GT(seen[1], 50);
}

TEST(Sampler, SamplingFollowsTheDistribution) {
  std::vector<float> base = {std::log(0.5f), std::log(0.25f), std::log(0.25f)};
  SamplingParams p;
  p.temperature = 1.0f;
  int n0 = 0;
  const int N = 4000;
  for (int i = 0; i < N; ++i) {
    p.seed = uint64_t(i);
    Sampler s(p, {});
    auto l = base;
    n0 += s.sample(l) == 0;
  }
  EXPECT_NEAR(double(n0) / N, 0.5, 0.04);
}

TEST(Sampler, RepetitionPenaltyIsHuggingFaceStyle) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  std::vector<int32_t> prompt = {0, 2};
  Sampler s(p, prompt);
  // token 0: 3 -> 1.5; token 2: -1 -> -2; token 1 untouched at 2 -> wins
  auto l = logits_of({3.0f, 2.0f, -1.0f});
  EXPECT_EQ(s.sample(l), 1);
  EXPECT_FLOAT_EQ(l[0], 1.5f);
  EXPECT_FLOAT_EQ(l[2], -2.0f);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountOutputTokensOnly) {
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 1.0f;
  std::vector<int32_t> prompt = {1};
  Sampler s(p, prompt);
  s.accept(0);
  s.accept(0);
  auto l = logits_of({3.0f, 1.0f});
  s.sample(l);
  EXPECT_FLOAT_EQ(l[0], 3.0f - 0.5f - 2.0f);
  EXPECT_FLOAT_EQ(l[1], 1.0f) << "prompt tokens are not penalized";
}

// What the engine hands a device that samples in the Sampler's place: the distinct seen ids,
// the output ids with their counts, and the next uniform, drawn exactly as sample() draws it.
TEST(Sampler, ExportsWhatADeviceNeeds) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.seed = 9;
  const std::vector<int32_t> prompt = {7, 3, 7, 11, 3};
  Sampler s(p, prompt);
  s.accept(5);
  s.accept(11);
  s.accept(5);
  EXPECT_EQ(std::vector<int32_t>(s.seen_ids().begin(), s.seen_ids().end()), (std::vector<int32_t>{3, 5, 7, 11}));
  EXPECT_EQ(std::vector<int32_t>(s.output_ids().begin(), s.output_ids().end()), (std::vector<int32_t>{5, 11}));
  EXPECT_EQ(std::vector<int32_t>(s.output_counts().begin(), s.output_counts().end()), (std::vector<int32_t>{2, 1}));
  // One uniform per sampled token, on either path.
  Rng r(9);
  Sampler t(p, prompt);
  auto l = logits_of({0.1f, 0.2f, 0.3f});
  t.sample(l);
  r.uniform();
  EXPECT_EQ(t.next_uniform(), r.uniform());
  EXPECT_EQ(t.next_uniform(), r.uniform());
  // Greedy draws nothing.
  SamplingParams g;
  g.repetition_penalty = 1.2f;
  Sampler greedy(g, prompt);
  EXPECT_EQ(greedy.next_uniform(), 0.0);
}

TEST(Sampler, InvalidParametersAreRejected) {
  auto bad = [](auto f) {
    SamplingParams p;
    f(p);
    EXPECT_THROW(validate(p), Error);
  };
  bad([](SamplingParams& p) { p.temperature = -1; });
  bad([](SamplingParams& p) { p.top_p = 0; });
  bad([](SamplingParams& p) { p.top_p = 1.5f; });
  bad([](SamplingParams& p) { p.min_p = 2; });
  bad([](SamplingParams& p) { p.top_k = -3; });
  bad([](SamplingParams& p) { p.repetition_penalty = 0; });
}

// Forgetting the last tokens restores the penalty lists and the generator: sampling again gives
// the tokens of the run that never had them (speculative decoding's rollback).
TEST(Sampler, RollbackForgetsTokensAndRewindsTheGenerator) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.9f;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.3f;
  p.seed = 42;
  const std::vector<int32_t> prompt = {3, 7, 7, 11};
  auto logits = [](int step) {
    std::vector<float> l(40);
    for (size_t i = 0; i < l.size(); ++i) l[i] = float(std::sin(double(i) * 0.7 + step * 0.3)) * 3.0f;
    return l;
  };
  Sampler ref(p, prompt), s(p, prompt);
  std::vector<int32_t> want, got;
  for (int i = 0; i < 30; ++i) {
    auto l = logits(i);
    want.push_back(ref.sample(l));
  }
  for (int i = 0; i < 20; ++i) {  // 20 tokens, then forget the last 12 (and 3 forced ones)
    auto l = logits(i);
    got.push_back(s.sample(l));
  }
  std::vector<int32_t> gone(got.end() - 12, got.end());
  got.resize(8);
  s.rollback(gone);
  for (int32_t forced : {7, 30, 30}) {  // as the device path: a uniform drawn, the device's id accepted
    s.next_uniform();
    s.accept(forced);
  }
  s.rollback(std::vector<int32_t>{7, 30, 30});
  Sampler at8(p, prompt);
  for (int i = 0; i < 8; ++i) {
    auto l = logits(i);
    at8.sample(l);
  }
  EXPECT_EQ(std::vector<int32_t>(s.seen_ids().begin(), s.seen_ids().end()),
            std::vector<int32_t>(at8.seen_ids().begin(), at8.seen_ids().end()));
  EXPECT_EQ(std::vector<int32_t>(s.output_ids().begin(), s.output_ids().end()),
            std::vector<int32_t>(at8.output_ids().begin(), at8.output_ids().end()));
  EXPECT_EQ(std::vector<int32_t>(s.output_counts().begin(), s.output_counts().end()),
            std::vector<int32_t>(at8.output_counts().begin(), at8.output_counts().end()));
  for (int i = 8; i < 30; ++i) {
    auto l = logits(i);
    got.push_back(s.sample(l));
  }
  EXPECT_EQ(got, want);
}

}  // namespace
