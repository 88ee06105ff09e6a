// The model-free proposers of speculative decoding (runtime/token_proposer.h) on their own:
// exact proposals on hand-made sequences, then both proposers against brute-force references
// (a scan of every position, a count over every stored sequence) over random small-alphabet
// histories of growth, rollback and finished requests. No model, no tensors.
#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <deque>
#include <map>
#include <random>

#include "core/error.h"
#include "runtime/token_proposer.h"

using namespace gale;

namespace {

using Tokens = std::vector<int32_t>;

Tokens propose(TokenProposer& p, uint64_t id, const Tokens& context, int64_t k) {
  Tokens out{-7};  // propose() must clear it
  p.propose(id, context, k, out);
  return out;
}

// ---- references ---------------------------------------------------------------------------

// Prompt lookup by definition: every earlier end position, latest first, longest n-gram first.
Tokens ngram_reference(const Tokens& ctx, int64_t k, int64_t min_ngram, int64_t max_ngram) {
  const int64_t len = int64_t(ctx.size());
  if (k <= 0) return {};
  for (int64_t n = max_ngram; n >= min_ngram; --n) {
    if (n >= len) continue;
    for (int64_t e = len - 1; e >= n; --e) {
      if (std::equal(ctx.begin() + (e - n), ctx.begin() + e, ctx.end() - n))
        return Tokens(ctx.begin() + e, ctx.begin() + e + std::min(k, len - e));
    }
  }
  return {};
}

// The suffix proposer by definition (suffix_proposer.cpp's header comment), counting over every
// stored sequence: the request's context and the cached finished ones.
class SuffixReference {
 public:
  explicit SuffixReference(SuffixProposerConfig cfg) : cfg_(cfg) {}

  void finish(const Tokens& ctx) {
    const int64_t keep = std::min<int64_t>(int64_t(ctx.size()), cfg_.max_cached_tokens);
    if (keep <= 0) return;
    while (cached_tokens_ + keep > cfg_.max_cached_tokens) {
      cached_tokens_ -= int64_t(cache_.front().size());
      cache_.pop_front();
    }
    cache_.emplace_back(ctx.end() - keep, ctx.end());
    cached_tokens_ += keep;
  }

  Tokens propose(const Tokens& ctx, int64_t k) const {
    const int64_t len = int64_t(ctx.size());
    if (k <= 0 || len == 0) return {};
    struct Occ {
      const Tokens* seq;
      int64_t end;
    };
    // Longest match and its occurrences in one sequence list, most recent first.
    auto match = [&](const std::vector<const Tokens*>& seqs, bool own, int64_t& best, std::vector<Occ>& occ) {
      for (const Tokens* s : seqs) {
        const int64_t slen = int64_t(s->size());
        for (int64_t e = (own ? len : slen) - 1; e >= 1; --e) {
          int64_t ell = 0;
          while (ell < std::min({cfg_.max_match, len, e}) && (*s)[size_t(e - 1 - ell)] == ctx[size_t(len - 1 - ell)])
            ++ell;
          if (ell == 0) continue;
          if (ell > best) best = ell, occ.clear();
          if (ell == best) occ.push_back({s, e});
        }
      }
    };
    int64_t own_len = 0, cached_len = 0;
    std::vector<Occ> own, cached;
    match({&ctx}, true, own_len, own);
    std::vector<const Tokens*> newest_first;
    for (auto it = cache_.rbegin(); it != cache_.rend(); ++it) newest_first.push_back(&*it);
    match(newest_first, false, cached_len, cached);
    std::vector<Occ> live = own_len >= cached_len ? own : cached;
    if (std::max(own_len, cached_len) == 0) return {};

    Tokens out;
    double probability = 1.0;
    for (int64_t j = 0; j < k && !live.empty(); ++j) {
      std::map<int32_t, int64_t> count;
      Tokens order;  // distinct next tokens by their most recent occurrence
      for (const Occ& o : live) {
        if (o.end + j >= int64_t(o.seq->size())) continue;
        const int32_t t = (*o.seq)[size_t(o.end + j)];
        if (count[t]++ == 0) order.push_back(t);
      }
      if (order.empty()) break;
      int32_t best = order[0];
      for (int32_t t : order)
        if (count[t] > count[best]) best = t;
      const double p = probability * double(count[best]) / double(live.size());
      if (p < double(cfg_.min_probability)) break;
      probability = p;
      out.push_back(best);
      std::vector<Occ> kept;
      for (const Occ& o : live)
        if (o.end + j < int64_t(o.seq->size()) && (*o.seq)[size_t(o.end + j)] == best) kept.push_back(o);
      live = std::move(kept);
    }
    return out;
  }

 private:
  SuffixProposerConfig cfg_;
  std::deque<Tokens> cache_;
  int64_t cached_tokens_ = 0;
};

// ---- n-gram: hand-made ----------------------------------------------------------------------

TEST(NgramProposer, ProposesWhatFollowedTheLongestEarlierNgram) {
  auto p = make_ngram_proposer({.min_ngram = 2, .max_ngram = 4});
  EXPECT_EQ(p->name(), "ngram");
  // "9 1 2 3" never occurred before; "1 2 3" did, followed by 4 5 9.
  EXPECT_EQ(propose(*p, 1, {1, 2, 3, 4, 5, 9, 1, 2, 3}, 3), (Tokens{4, 5, 9}));
  // A longer n-gram wins over a more recent shorter one: "5 1 2" ended at 3, "1 2" latest at 7.
  auto q = make_ngram_proposer({.min_ngram = 2, .max_ngram = 3});
  EXPECT_EQ(propose(*q, 1, {5, 1, 2, 7, 3, 1, 2, 8, 5, 1, 2}, 3), (Tokens{7, 3, 1}));
}

TEST(NgramProposer, MostRecentOccurrenceAndContextBound) {
  auto p = make_ngram_proposer({.min_ngram = 2, .max_ngram = 4});
  const Tokens ctx{1, 2, 7, 1, 2, 8, 1, 2};
  EXPECT_EQ(propose(*p, 1, ctx, 2), (Tokens{8, 1}));
  EXPECT_EQ(propose(*p, 1, ctx, 3), (Tokens{8, 1, 2}));
  // k beyond what follows: only the tokens up to the end of the context.
  EXPECT_EQ(propose(*p, 1, ctx, 1000), (Tokens{8, 1, 2}));
  EXPECT_EQ(propose(*p, 1, ctx, INT64_MAX), (Tokens{8, 1, 2}));
}

TEST(NgramProposer, NoMatchEmptyContextAndZeroK) {
  auto p = make_ngram_proposer({});
  EXPECT_TRUE(propose(*p, 1, {1, 2, 3, 4, 5}, 4).empty());
  EXPECT_TRUE(propose(*p, 2, {}, 4).empty());
  EXPECT_TRUE(propose(*p, 3, {7}, 4).empty());
  EXPECT_TRUE(propose(*p, 4, {1, 2, 1, 2}, 0).empty());
  EXPECT_TRUE(propose(*p, 4, {1, 2, 1, 2}, -3).empty());
  EXPECT_EQ(propose(*p, 4, {1, 2, 1, 2}, 1), (Tokens{1}));
}

TEST(NgramProposer, MinAndMaxNgram) {
  auto two = make_ngram_proposer({.min_ngram = 2, .max_ngram = 2});
  auto one = make_ngram_proposer({.min_ngram = 1, .max_ngram = 1});
  // Only the last token recurs: an n-gram of 2 finds nothing, of 1 finds 9 1.
  EXPECT_TRUE(propose(*two, 1, {1, 9, 1}, 4).empty());
  EXPECT_EQ(propose(*one, 1, {1, 9, 1}, 4), (Tokens{9, 1}));
  // max_ngram caps the match: with 2, "2 3" last ended at 7 (followed by 8), not the older 1 2 3.
  auto capped = make_ngram_proposer({.min_ngram = 1, .max_ngram = 2});
  EXPECT_EQ(propose(*capped, 1, {1, 2, 3, 9, 4, 2, 3, 8, 1, 2, 3}, 2), (Tokens{8, 1}));
  EXPECT_THROW(make_ngram_proposer({.min_ngram = 0, .max_ngram = 2}), Error);
  EXPECT_THROW(make_ngram_proposer({.min_ngram = 3, .max_ngram = 2}), Error);
}

TEST(NgramProposer, OverlappingMatches) {
  auto p = make_ngram_proposer({.min_ngram = 2, .max_ngram = 4});
  // "4 4 4" ends the context and occurred ending one position earlier: one token follows it.
  EXPECT_EQ(propose(*p, 1, {4, 4, 4, 4}, 5), (Tokens{4}));
  // Period 2: "2 1 2 1" last ended at 5, overlapping the final one: only 2 1 follow it.
  EXPECT_EQ(propose(*p, 2, {1, 2, 1, 2, 1, 2, 1}, 5), (Tokens{2, 1}));
}

TEST(NgramProposer, RollbackShrinksAndRegrowsTheContext) {
  auto p = make_ngram_proposer({.min_ngram = 2, .max_ngram = 4});
  EXPECT_EQ(propose(*p, 1, {1, 2, 3, 1, 2}, 3), (Tokens{3, 1, 2}));
  // Rolled back to before the earlier occurrence's continuation: nothing left to propose.
  EXPECT_TRUE(propose(*p, 1, {1, 2}, 3).empty());
  EXPECT_EQ(propose(*p, 1, {1, 2, 5, 1, 2}, 3), (Tokens{5, 1, 2}));
  // Same length, different tail (a rollback and a regrowth between two calls).
  EXPECT_EQ(propose(*p, 1, {1, 2, 5, 6, 2}, 3), (Tokens{}));
  EXPECT_EQ(propose(*p, 1, {1, 2, 5, 6, 2, 5}, 3), (Tokens{6, 2, 5}));
  // Growth by many tokens at once.
  EXPECT_EQ(propose(*p, 1, {1, 2, 5, 6, 2, 5, 9, 9, 1, 2}, 2), (Tokens{5, 6}));
}

TEST(NgramProposer, InterleavedRequestsKeepTheirOwnState) {
  auto p = make_ngram_proposer({.min_ngram = 2, .max_ngram = 3});
  Tokens a{1, 2, 3, 1, 2}, b{1, 2, 4, 1, 2};
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(propose(*p, 10, a, 1), (Tokens{a[2]}));
    EXPECT_EQ(propose(*p, 20, b, 1), (Tokens{b[2]}));
    a.insert(a.end() - 2, 7);
    b.insert(b.end() - 2, 8);
  }
  p->finish(10, a);
  // A finished id reused for another context starts afresh.
  EXPECT_EQ(propose(*p, 10, {5, 6, 5, 6, 5}, 2), (Tokens{6, 5}));
}

TEST(NgramProposer, ExtremeTokenIdsAreOpaque) {
  auto p = make_ngram_proposer({});
  const Tokens ctx{INT32_MAX, -1, INT32_MIN, 7, 0, INT32_MAX, -1};
  EXPECT_EQ(propose(*p, 1, ctx, 3), (Tokens{INT32_MIN, 7, 0}));
  EXPECT_TRUE(propose(*p, 2, {INT32_MIN, INT32_MAX, -2, INT32_MIN, INT32_MAX - 1}, 3).empty());
}

// ---- suffix: hand-made ---------------------------------------------------------------------

TEST(SuffixProposer, FollowsTheOwnContextWhileItIsCertain) {
  auto p = make_suffix_proposer({});
  EXPECT_EQ(p->name(), "suffix");
  const Tokens ctx{1, 2, 3, 4, 5, 6, 1, 2, 3};
  EXPECT_EQ(propose(*p, 1, ctx, 4), (Tokens{4, 5, 6, 1}));
  EXPECT_EQ(propose(*p, 1, ctx, 100), (Tokens{4, 5, 6, 1, 2, 3}));
  EXPECT_TRUE(propose(*p, 1, ctx, 0).empty());
  EXPECT_TRUE(propose(*p, 2, {}, 4).empty());
  EXPECT_TRUE(propose(*p, 3, {1, 2, 3}, 4).empty());
}

TEST(SuffixProposer, MostFrequentContinuationAndItsProbability) {
  // "7 1" occurred three times before, followed by 2, 3, 2: 2 at 2/3; then 7 or 9 (one each:
  // the most recent, 9, at 2/3 * 1/2), then that single occurrence's 7 1.
  const Tokens ctx{7, 1, 2, 7, 1, 3, 7, 1, 2, 9, 7, 1};
  auto lenient = make_suffix_proposer({.min_probability = 0.1f});
  EXPECT_EQ(propose(*lenient, 1, ctx, 8), (Tokens{2, 9, 7, 1}));
  auto half = make_suffix_proposer({.min_probability = 0.5f});
  EXPECT_EQ(propose(*half, 1, ctx, 8), (Tokens{2}));
  auto strict = make_suffix_proposer({.min_probability = 0.7f});
  EXPECT_TRUE(propose(*strict, 1, ctx, 8).empty());
}

TEST(SuffixProposer, MaxMatchBoundsTheSuffix) {
  const Tokens ctx{1, 2, 3, 9, 8, 2, 3, 7, 1, 2, 3};
  auto full = make_suffix_proposer({.max_match = 32, .min_probability = 0.0f});
  EXPECT_EQ(propose(*full, 1, ctx, 3), (Tokens{9, 8, 2}));
  // Matching "2 3" only: followed by 9 and by 7, the more recent 7 wins the tie.
  auto two = make_suffix_proposer({.max_match = 2, .min_probability = 0.0f});
  EXPECT_EQ(propose(*two, 1, ctx, 3), (Tokens{7, 1, 2}));
  EXPECT_THROW(make_suffix_proposer({.max_match = 0}), Error);
  EXPECT_THROW(make_suffix_proposer({.max_cached_tokens = -1}), Error);
  EXPECT_THROW(make_suffix_proposer({.min_probability = 1.5f}), Error);
}

TEST(SuffixProposer, FinishedRequestsFeedLaterOnes) {
  auto p = make_suffix_proposer({});
  EXPECT_TRUE(propose(*p, 1, {10, 11}, 4).empty());
  p->finish(1, Tokens{10, 11, 12, 13, 14});
  // Request 2 never saw 13 14: they come from request 1, up to its end.
  EXPECT_EQ(propose(*p, 2, {5, 11, 12}, 5), (Tokens{13, 14}));
  // On equal match lengths the request's own context wins; a longer cached match wins over it.
  p->finish(3, Tokens{1, 2, 3, 50, 51});
  EXPECT_EQ(propose(*p, 4, {9, 2, 3, 60, 2, 3}, 3), (Tokens{60, 2, 3}));
  EXPECT_EQ(propose(*p, 5, {7, 2, 3, 60, 1, 2, 3}, 3), (Tokens{50, 51}));
}

TEST(SuffixProposer, CacheBoundEvictsOldestRequests) {
  auto p = make_suffix_proposer({.max_cached_tokens = 8});
  p->finish(1, Tokens{1, 2, 3, 4});
  p->finish(2, Tokens{5, 6, 7, 8});
  EXPECT_EQ(propose(*p, 9, {1, 2}, 4), (Tokens{3, 4}));
  p->finish(3, Tokens{9, 10, 11});  // 11 tokens > 8: request 1 goes
  EXPECT_TRUE(propose(*p, 10, {1, 2}, 4).empty());
  EXPECT_EQ(propose(*p, 11, {5, 6}, 4), (Tokens{7, 8}));
  EXPECT_EQ(propose(*p, 12, {9, 10}, 4), (Tokens{11}));
  // Longer than the whole cache: its last 8 tokens stay, everything else goes.
  p->finish(4, Tokens{20, 21, 22, 23, 24, 25, 26, 27, 28, 29});
  EXPECT_TRUE(propose(*p, 13, {5, 6}, 4).empty());
  EXPECT_TRUE(propose(*p, 14, {20, 21}, 4).empty());
  EXPECT_EQ(propose(*p, 15, {22, 23}, 4), (Tokens{24, 25, 26, 27}));
  auto none = make_suffix_proposer({.max_cached_tokens = 0});
  none->finish(1, Tokens{1, 2, 3});
  EXPECT_TRUE(propose(*none, 2, {1, 2}, 4).empty());
}

TEST(SuffixProposer, RollbackAndInterleavedRequests) {
  auto p = make_suffix_proposer({});
  EXPECT_EQ(propose(*p, 1, {1, 2, 3, 4, 1, 2}, 3), (Tokens{3, 4, 1}));
  EXPECT_EQ(propose(*p, 2, {1, 2, 8, 1, 2}, 3), (Tokens{8, 1, 2}));
  EXPECT_TRUE(propose(*p, 1, {1, 2, 3}, 3).empty());
  EXPECT_EQ(propose(*p, 1, {1, 2, 3, 5, 1, 2}, 3), (Tokens{3, 5, 1}));
  EXPECT_EQ(propose(*p, 2, {1, 2, 8, 1, 2, 8, 1}, 2), (Tokens{2, 8}));
  // An aborted request's context feeds the cache like a finished one's.
  p->finish(2, Tokens{1, 2, 8, 1, 2, 8, 1});
  EXPECT_EQ(propose(*p, 3, {4, 8, 1}, 2), (Tokens{2, 8}));
}

TEST(SuffixProposer, ExtremeTokenIdsAreOpaque) {
  auto p = make_suffix_proposer({});
  EXPECT_EQ(propose(*p, 1, {INT32_MAX, -1, INT32_MIN, 7, INT32_MAX, -1}, 3), (Tokens{INT32_MIN, 7, INT32_MAX}));
  p->finish(1, Tokens{INT32_MIN, INT32_MIN, -5, INT32_MAX});
  EXPECT_EQ(propose(*p, 2, {0, -5}, 3), (Tokens{INT32_MAX}));
}

// A context of one token repeated: every position matches, and both proposers must still answer
// without scanning the context per call.
TEST(TokenProposers, DegenerateRepetitionStaysCheap) {
  auto ngram = make_ngram_proposer({});
  auto suffix = make_suffix_proposer({});
  Tokens ctx(20000, 42);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 200; ++i) {
    ctx.push_back(42);
    EXPECT_EQ(propose(*ngram, 1, ctx, 4), (Tokens{42}));
    // Every walked occurrence agrees; each step loses only the one that reached the end.
    EXPECT_EQ(propose(*suffix, 1, ctx, 4), (Tokens{42, 42, 42, 42}));
  }
  suffix->finish(1, ctx);
  EXPECT_EQ(propose(*suffix, 2, {42, 42}, 4), (Tokens{42, 42, 42, 42}));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 20.0);  // generous: sanitizers; a scan per call would still pass, this guards hangs
}

// ---- randomized against the references ------------------------------------------------------

// A history for one request: growth by a few tokens, rollbacks, and a rollback then regrowth.
void mutate(Tokens& ctx, std::mt19937& rng, int alphabet) {
  std::uniform_int_distribution<int> tok(0, alphabet - 1), op(0, 9), n(1, 4);
  const int o = op(rng);
  if (o < 6 || ctx.size() < 2) {
    for (int i = n(rng); i > 0; --i) ctx.push_back(tok(rng));
  } else {
    const size_t cut = std::min(ctx.size(), size_t(n(rng)) * (o == 9 ? 4 : 1));
    ctx.resize(ctx.size() - cut);
    if (o >= 8)
      for (int i = n(rng); i > 0; --i) ctx.push_back(tok(rng));
  }
}

TEST(NgramProposer, MatchesBruteForceOnRandomHistories) {
  std::mt19937 rng(19);
  int64_t compared = 0, nonempty = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t min_ngram = 1 + int64_t(rng() % 3);
    const int64_t max_ngram = min_ngram + int64_t(rng() % 4);
    const int alphabet = 2 + int(rng() % 3);
    auto p = make_ngram_proposer({.min_ngram = min_ngram, .max_ngram = max_ngram});
    std::vector<Tokens> ctx(3);
    for (int step = 0; step < 60; ++step) {
      const uint64_t id = rng() % 3;
      mutate(ctx[id], rng, alphabet);
      if (ctx[id].size() > 80) ctx[id].erase(ctx[id].begin() + 40, ctx[id].end());
      const int64_t k = int64_t(rng() % 7);
      const Tokens want = ngram_reference(ctx[id], k, min_ngram, max_ngram);
      ASSERT_EQ(propose(*p, id, ctx[id], k), want) << "trial " << trial << " step " << step;
      ++compared;
      nonempty += !want.empty();
      if (rng() % 25 == 0) {
        p->finish(id, ctx[id]);
        ctx[id].clear();
      }
    }
  }
  EXPECT_EQ(compared, 300 * 60);
  EXPECT_GT(nonempty, compared / 3);  // the histories exercise matches, not just misses (k = 0 is 1 in 7)
}

TEST(SuffixProposer, MatchesBruteForceOnRandomHistories) {
  std::mt19937 rng(1919);
  int64_t compared = 0, nonempty = 0, from_cache = 0;
  const float probabilities[] = {0.0f, 0.1f, 0.3f, 0.6f};
  for (int trial = 0; trial < 300; ++trial) {
    SuffixProposerConfig cfg{.max_match = 1 + int64_t(rng() % 8),
                             .max_cached_tokens = int64_t(rng() % 150),
                             .min_probability = probabilities[rng() % 4]};
    const int alphabet = 2 + int(rng() % 4);
    auto p = make_suffix_proposer(cfg);
    SuffixReference ref(cfg);
    std::vector<Tokens> ctx(3);
    for (int step = 0; step < 60; ++step) {
      const uint64_t id = rng() % 3;
      mutate(ctx[id], rng, alphabet);
      if (ctx[id].size() > 60) ctx[id].erase(ctx[id].begin() + 30, ctx[id].end());
      const int64_t k = int64_t(rng() % 7);
      const Tokens want = ref.propose(ctx[id], k);
      ASSERT_EQ(propose(*p, id, ctx[id], k), want) << "trial " << trial << " step " << step;
      ++compared;
      nonempty += !want.empty();
      SuffixReference own_only({.max_match = cfg.max_match, .max_cached_tokens = 0,
                                .min_probability = cfg.min_probability});
      from_cache += want != own_only.propose(ctx[id], k);
      if (rng() % 8 == 0) {
        p->finish(id, ctx[id]);
        ref.finish(ctx[id]);
        ctx[id].clear();
      }
    }
  }
  EXPECT_EQ(compared, 300 * 60);
  EXPECT_GT(nonempty, compared / 2);
  EXPECT_GT(from_cache, compared / 50);  // the cache decides a fair share of the proposals
}

}  // namespace
