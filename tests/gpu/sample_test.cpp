// The sampling kernel (kernels/cuda/sample.cu) against a host reference written from
// runtime/sampler.cpp's Sampler::sample: the kept set and its probabilities after penalties,
// temperature, top-k, top-p and min-p. The kernel draws over the kept tokens in id order, so
// for a uniform u it must return the kept token whose interval [C(j-1), C(j)) of the
// cumulative reference probabilities (in id order) holds u.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "gpu_test_util.h"
#include "kernels/cuda/sample.cuh"

namespace gale {
namespace {

using namespace gale::test;
using cuda::SampleRow;

// One row's parameters and penalty lists.
struct Case {
  SampleRow s;
  std::vector<int32_t> seen, out_ids, counts;
};

// Sampler::sample's penalties, on a copy of the row.
std::vector<float> penalized(std::vector<float> l, const Case& c) {
  const int32_t V = int32_t(l.size());
  if (c.s.repetition_penalty != 1.0f)
    for (int32_t id : c.seen)
      if (id >= 0 && id < V) l[size_t(id)] = l[size_t(id)] > 0 ? l[size_t(id)] / c.s.repetition_penalty
                                                               : l[size_t(id)] * c.s.repetition_penalty;
  if (c.s.presence_penalty != 0.0f || c.s.frequency_penalty != 0.0f)
    for (size_t i = 0; i < c.out_ids.size(); ++i)
      if (c.out_ids[i] >= 0 && c.out_ids[i] < V)
        l[size_t(c.out_ids[i])] -= c.s.presence_penalty + c.s.frequency_penalty * float(c.counts[i]);
  return l;
}

// The kept tokens in id order and their probabilities (summing to 1), as Sampler::sample
// computes them: sorted by (logit descending, id ascending), top-k, softmax in double, the
// shortest prefix reaching top_p, then p >= min_p * p(max).
struct Kept {
  std::vector<int32_t> ids;
  std::vector<double> p;
  bool has(int32_t id) const { return std::binary_search(ids.begin(), ids.end(), id); }
};
Kept reference(const std::vector<float>& row, const Case& c) {
  std::vector<float> l = penalized(row, c);
  if (c.s.temperature == 0.0f) {
    return {{int32_t(std::max_element(l.begin(), l.end()) - l.begin())}, {1.0}};
  }
  for (float& x : l) x /= c.s.temperature;
  std::vector<int32_t> idx(l.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b);
  });
  size_t n = l.size();
  if (c.s.top_k > 0 && size_t(c.s.top_k) < n) n = size_t(c.s.top_k);
  const float m = l[size_t(idx[0])];
  std::vector<double> prob(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (prob[i] = std::exp(double(l[size_t(idx[i])] - m)));
  for (double& q : prob) q /= sum;
  if (c.s.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i)
      if ((cum += prob[i]) >= double(c.s.top_p)) {
        n = i + 1;
        break;
      }
  }
  if (c.s.min_p > 0.0f) {
    size_t keep = 1;
    while (keep < n && prob[keep] >= double(c.s.min_p) * prob[0]) ++keep;
    n = keep;
  }
  std::vector<std::pair<int32_t, double>> kept;
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    kept.push_back({idx[i], prob[i]});
    total += prob[i];
  }
  std::sort(kept.begin(), kept.end());
  Kept k;
  for (auto [id, q] : kept) {
    k.ids.push_back(id);
    k.p.push_back(q / total);
  }
  return k;
}

// Runs the kernel over rows[i] applied to logit row i (each row ld floats apart); returns the
// ids, and the logits as the kernel left them (penalized) in *after.
// masks: per row, its token mask (ceil(vocab / 32) words) or empty for none.
std::vector<int32_t> sample(const std::vector<float>& logits, int64_t vocab, int64_t ld, const std::vector<Case>& rows,
                            std::vector<float>* after = nullptr, const std::vector<std::vector<uint32_t>>* masks = nullptr) {
  std::vector<SampleRow> srows;
  std::vector<uint32_t> mask_pool;
  std::vector<int32_t> seen, out_ids, counts;
  for (const Case& c : rows) {
    SampleRow s = c.s;
    s.seen_off = int32_t(seen.size());
    s.n_seen = int32_t(c.seen.size());
    s.output_off = int32_t(out_ids.size());
    s.n_output = int32_t(c.out_ids.size());
    seen.insert(seen.end(), c.seen.begin(), c.seen.end());
    out_ids.insert(out_ids.end(), c.out_ids.begin(), c.out_ids.end());
    counts.insert(counts.end(), c.counts.begin(), c.counts.end());
    if (masks && !(*masks)[srows.size()].empty()) {
      s.mask_off = int64_t(mask_pool.size());
      mask_pool.insert(mask_pool.end(), (*masks)[srows.size()].begin(), (*masks)[srows.size()].end());
    }
    srows.push_back(s);
  }
  const int64_t n = int64_t(rows.size());
  DevBuf d_l = to_device(logits), d_rows = to_device(srows), d_seen = to_device(seen), d_ids = to_device(out_ids),
         d_counts = to_device(counts), d_out(size_t(n) * 4), d_masks = to_device(mask_pool);
  cuda::SampleParams p{d_l.as<float>(),           ld,       n, vocab, d_rows.as<SampleRow>(), d_seen.as<int32_t>(),
                       int64_t(seen.size()),      d_ids.as<int32_t>(), d_counts.as<int32_t>(), int64_t(out_ids.size()),
                       d_out.as<int32_t>()};
  p.masks = d_masks.as<uint32_t>();
  p.n_mask_words = int64_t(mask_pool.size());
  EXPECT_EQ(cuda::sample(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (after) *after = d_l.download<float>(logits.size());
  return d_out.download<int32_t>(size_t(n));
}

// The same logit row n times, once per u.
std::vector<int32_t> sample_each_u(const std::vector<float>& row, Case c, const std::vector<double>& us) {
  std::vector<float> logits;
  std::vector<Case> rows;
  for (double u : us) {
    logits.insert(logits.end(), row.begin(), row.end());
    c.s.u = u;
    rows.push_back(c);
  }
  return sample(logits, int64_t(row.size()), int64_t(row.size()), rows);
}

// For each kept token (in id order) of mass >= 1e-5: the u in the middle of its interval, and
// the token a draw there must give.
void add_midpoints(const Kept& k, std::vector<double>& us, std::vector<int32_t>& want) {
  double cum = 0;
  for (size_t j = 0; j < k.ids.size(); ++j) {
    if (k.p[j] >= 1e-5) {
      us.push_back(cum + k.p[j] / 2);
      want.push_back(k.ids[j]);
    }
    cum += k.p[j];
  }
}

// The kernel's draw for u in the middle of each kept token's interval (in id order) is that
// token; u = 0 gives the first kept id, u just below 1 the last. Tokens too unlikely for a
// float-precision boundary to be 1e-5 of mass away are not probed in the middle, and the ends
// only where every kept token has a mass the kernel represents (>= 2^-41 of the maximum's).
void expect_intervals(const std::vector<float>& row, const Case& c) {
  const Kept k = reference(row, c);
  std::vector<double> us;
  std::vector<int32_t> want;
  const double pmax = *std::max_element(k.p.begin(), k.p.end());
  if (*std::min_element(k.p.begin(), k.p.end()) >= 1e-10 * pmax) {
    us = {0.0, std::nextafter(1.0, 0.0)};
    want = {k.ids.front(), k.ids.back()};
  }
  add_midpoints(k, us, want);
  EXPECT_EQ(sample_each_u(row, c, us), want);
}

// expect_intervals for a masked row: `row` has the masked logits at -inf already (the
// reference's input); the kernel gets the original logits with the mask. Only tokens of mass
// >= 1e-5 are probed, so the -inf ones (mass 0) never are.
void expect_intervals_masked(const std::vector<float>& masked_row, const Case& c, const std::vector<uint32_t>& mask) {
  if (mask.empty()) return;  // an unmasked row: expect_intervals covers it
  const Kept k = reference(masked_row, c);
  std::vector<double> us;
  std::vector<int32_t> want;
  add_midpoints(k, us, want);
  // The kernel sees random logits where the mask is 0: fill them with garbage to prove they
  // are ignored.
  std::vector<float> logits;
  std::vector<Case> rows;
  std::vector<std::vector<uint32_t>> masks;
  for (double u : us) {
    std::vector<float> r = masked_row;
    for (float& x : r)
      if (x == -INFINITY) x = 50.0f;
    logits.insert(logits.end(), r.begin(), r.end());
    Case cu = c;
    cu.s.u = u;
    rows.push_back(cu);
    masks.push_back(mask);
  }
  EXPECT_EQ(sample(logits, int64_t(masked_row.size()), int64_t(masked_row.size()), rows, nullptr, &masks), want);
}

Case plain(float temperature, int top_k = 0, float top_p = 1.0f, float min_p = 0.0f) {
  Case c;
  c.s.temperature = temperature;
  c.s.top_k = top_k;
  c.s.top_p = top_p;
  c.s.min_p = min_p;
  return c;
}

TEST(CudaSample, TopKOneAndTemperatureZeroAreTheArgmax) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int64_t V : {1, 7, 1003, 1024, 1025, 151936}) {
    SCOPED_TRACE(V);
    const int64_t n = 24, ld = V + 5;
    auto logits = randn(size_t(n * ld), g, 2.0f);
    std::vector<Case> rows;
    for (int64_t r = 0; r < n; ++r) {
      float* l = logits.data() + r * ld;
      if (r % 3 == 1 && V > 4) l[V - 1] = l[V / 2] = l[2] = 50.0f;  // ties: the lowest id wins
      if (r % 4 == 2) l[0] = NAN;                                       // never beats a number
      Case c = plain(r % 2 ? 0.0f : 0.25f + float(r), r % 2 ? 0 : 1);
      c.s.u = U(g);
      rows.push_back(c);
    }
    auto got = sample(logits, V, ld, rows);
    for (int64_t r = 0; r < n; ++r) {
      // The order is by l / temperature (as the CPU's): division may merge close values.
      const float* l = logits.data() + r * ld;
      const float t = rows[size_t(r)].s.temperature > 0 ? rows[size_t(r)].s.temperature : 1.0f;
      int32_t best = -1;
      for (int64_t i = 0; i < V; ++i)
        if (!std::isnan(l[i]) && (best < 0 || l[i] / t > l[best] / t)) best = int32_t(i);
      EXPECT_EQ(got[size_t(r)], best < 0 ? 0 : best) << "row " << r;
    }
  }
}

// Random rows of every filter combination: every draw lies in the reference's kept set.
TEST(CudaSample, DrawsLieInTheKeptSet) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const int tks[] = {0, 1, 5, 40, 1000};
  const float tps[] = {1.0f, 0.95f, 0.6f, 0.2f};
  const float mps[] = {0.0f, 0.02f, 0.3f};
  for (int64_t V : {50, 3001, 151936}) {
    SCOPED_TRACE(V);
    const int64_t n = V > 10000 ? 16 : 120, ld = V + 3;
    auto logits = randn(size_t(n * ld), g, 3.0f);
    std::vector<Case> rows;
    for (int64_t r = 0; r < n; ++r) {
      Case c = plain(0.3f + 2.0f * float(U(g)), tks[g() % 5], tps[g() % 4], mps[g() % 3]);
      c.s.u = U(g);
      rows.push_back(c);
    }
    auto got = sample(logits, V, ld, rows);
    for (int64_t r = 0; r < n; ++r) {
      const std::vector<float> row(logits.begin() + r * ld, logits.begin() + r * ld + V);
      const Kept k = reference(row, rows[size_t(r)]);
      EXPECT_TRUE(k.has(got[size_t(r)])) << "row " << r << " drew " << got[size_t(r)] << " top_k "
                                         << rows[size_t(r)].s.top_k << " top_p " << rows[size_t(r)].s.top_p
                                         << " min_p " << rows[size_t(r)].s.min_p;
    }
  }
}

// 20,000 draws of one row with random u: each token's count is within 5 standard deviations
// (+3 for the rare tokens) of its reference expectation, tokens outside the kept set never
// come, and Pearson's chi-square (rare tokens pooled into one bin) stays far below chance.
TEST(CudaSample, FrequenciesFollowTheReferenceProbabilities) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const int64_t V = 50, N = 20000;
  const std::vector<float> row = randn(size_t(V), g, 1.5f);
  for (const Case& c : {plain(1.0f), plain(0.7f, 20, 0.9f, 0.02f), plain(1.6f, 0, 0.5f), plain(0.9f, 0, 1.0f, 0.1f)}) {
    SCOPED_TRACE(testing::Message() << "top_k " << c.s.top_k << " top_p " << c.s.top_p << " min_p " << c.s.min_p);
    std::vector<double> us(N);
    for (double& u : us) u = U(g);
    auto got = sample_each_u(row, c, us);
    std::vector<int64_t> count(static_cast<size_t>(V));
    for (int32_t id : got) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, V);
      ++count[size_t(id)];
    }
    const Kept k = reference(row, c);
    std::vector<double> p(static_cast<size_t>(V));
    for (size_t j = 0; j < k.ids.size(); ++j) p[size_t(k.ids[j])] = k.p[j];
    double chi2 = 0, rare_seen = 0, rare_expected = 0;
    int bins = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double c_i = double(count[size_t(i)]), e = p[size_t(i)] * double(N);
      if (e == 0) {
        EXPECT_EQ(c_i, 0) << "token " << i << " is outside the kept set";
        continue;
      }
      EXPECT_LE(std::abs(c_i - e), 5 * std::sqrt(e * (1 - p[size_t(i)])) + 3) << "token " << i;
      if (e < 5) {
        rare_seen += c_i;
        rare_expected += e;
      } else {
        chi2 += (c_i - e) * (c_i - e) / e;
        ++bins;
      }
    }
    if (rare_expected > 0) {
      chi2 += (rare_seen - rare_expected) * (rare_seen - rare_expected) / rare_expected;
      ++bins;
    }
    // Mean df, sd sqrt(2 df): df + 6 sd is far beyond chance.
    const double df = std::max(bins - 1, 1);
    EXPECT_LE(chi2, df + 6 * std::sqrt(2 * df)) << "kept " << k.ids.size();
  }
}

// The draw is a function of u: the same u gives the same id, and sweeping u upwards visits the
// kept ids in increasing order, each in its reference interval.
TEST(CudaSample, DrawIsDeterministicAndMonotoneInU) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int64_t V : {50, 4099}) {
    const std::vector<float> row = randn(size_t(V), g, V > 100 ? 3.0f : 1.0f);
    for (const Case& c : {plain(1.0f), plain(0.8f, 30, 0.8f), plain(1.2f, 0, 0.9f, 0.05f), plain(0.5f, 3)}) {
      SCOPED_TRACE(testing::Message() << "V " << V << " top_k " << c.s.top_k << " top_p " << c.s.top_p);
      std::vector<double> us;
      for (int i = 0; i < 500; ++i) us.push_back(U(g));
      std::vector<double> twice = us;
      twice.insert(twice.end(), us.begin(), us.end());
      auto got = sample_each_u(row, c, twice);
      for (size_t i = 0; i < us.size(); ++i) EXPECT_EQ(got[i], got[i + us.size()]) << "u " << us[i];
      std::vector<double> sweep;
      for (int i = 0; i < 4000; ++i) sweep.push_back(double(i) / 4000.0);
      auto ids = sample_each_u(row, c, sweep);
      EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
      const Kept k = reference(row, c);
      for (int32_t id : ids) EXPECT_TRUE(k.has(id)) << id;
      expect_intervals(row, c);
    }
  }
}

// Repetition (HF style, over prompt + output ids), presence and frequency penalties: the kernel
// leaves exactly Sampler::sample's penalized logits, and draws by their probabilities.
TEST(CudaSample, PenaltiesFollowTheSampler) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const int64_t V = 60;
  std::vector<float> logits;
  std::vector<Case> rows;
  for (int r = 0; r < 40; ++r) {
    const auto row = randn(size_t(V), g, 2.0f);
    logits.insert(logits.end(), row.begin(), row.end());
    Case c = plain(r % 5 == 0 ? 0.0f : 0.5f + float(r % 4) * 0.4f, r % 3 == 0 ? 10 : 0, r % 2 ? 0.9f : 1.0f);
    c.s.repetition_penalty = r % 4 == 3 ? 1.0f : 0.7f + 0.1f * float(r % 7);
    c.s.presence_penalty = r % 3 == 2 ? 0.0f : -1.5f + 0.1f * float(r);
    c.s.frequency_penalty = r % 5 == 4 ? 0.0f : 0.3f * float(r % 4) - 0.4f;
    c.s.u = U(g);
    for (int32_t id = 0; id < V; ++id)
      if (g() % 3 == 0) c.seen.push_back(id);
    c.seen.push_back(int32_t(V + 7));  // outside the vocabulary: skipped, as on the CPU
    for (int32_t id = 0; id < V; ++id)
      if (g() % 4 == 0) {
        c.out_ids.push_back(id);
        c.counts.push_back(1 + int32_t(g() % 5));
      }
    c.out_ids.push_back(-3);
    c.counts.push_back(2);
    rows.push_back(c);
  }
  std::vector<float> after;
  auto got = sample(logits, V, V, rows, &after);
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE(r);
    const std::vector<float> row(logits.begin() + int64_t(r) * V, logits.begin() + int64_t(r + 1) * V);
    const std::vector<float> want = penalized(row, rows[r]);
    for (int64_t i = 0; i < V; ++i) ASSERT_EQ(after[size_t(r) * V + size_t(i)], want[size_t(i)]) << "logit " << i;
    EXPECT_TRUE(reference(row, rows[r]).has(got[r]));
    expect_intervals(row, rows[r]);
  }
}

// Equal logits at the top-k or top-p cut: the lower ids are kept (the CPU's sort order), also
// over ties that span many 1024-token chunks.
TEST(CudaSample, TiesAtTheCutKeepTheLowerIds) {
  GALE_REQUIRE_GPU();
  const auto kept_ids = [](const std::vector<float>& row, const Case& c) {
    std::vector<double> sweep;
    for (int i = 0; i < 20000; ++i) sweep.push_back(double(i) / 20000.0);
    auto ids = sample_each_u(row, c, sweep);
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
  };
  // 3 3 2 2 2 2 1 ...: top-k 4 keeps the two 3s and the first two 2s.
  std::vector<float> row(50, 1.0f);
  row[0] = row[1] = 3.0f;
  for (int i = 2; i < 6; ++i) row[size_t(i)] = 2.0f;
  EXPECT_EQ(kept_ids(row, plain(1.0f, 4)), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(reference(row, plain(1.0f, 4)).ids, (std::vector<int32_t>{0, 1, 2, 3}));
  // Ten equal logits, top-p 0.35: four tokens of 0.1 reach it.
  std::vector<float> flat(10, 0.5f);
  EXPECT_EQ(kept_ids(flat, plain(1.0f, 0, 0.35f)), (std::vector<int32_t>{0, 1, 2, 3}));
  expect_intervals(flat, plain(1.0f, 0, 0.35f));
  // Ties inside and across chunks: 5000 equal logits but a few larger ones late in the row.
  std::vector<float> wide(5000, -1.0f);
  for (int i : {4990, 3000, 17}) wide[size_t(i)] = 2.0f;
  for (const Case& c : {plain(1.0f, 1500), plain(1.0f, 3000, 0.45f), plain(1.0f, 0, 0.27f), plain(0.7f, 2)}) {
    SCOPED_TRACE(testing::Message() << "top_k " << c.s.top_k << " top_p " << c.s.top_p);
    const Kept k = reference(wide, c);
    const std::vector<double> us = {0.0, std::nextafter(1.0, 0.0)};
    EXPECT_EQ(sample_each_u(wide, c, us), (std::vector<int32_t>{k.ids.front(), k.ids.back()}));
    expect_intervals(wide, c);
  }
}

// Constrained decoding's token mask (SampleRow::mask_off): a masked token is never drawn, and
// the draw follows the reference over the logits with the masked ones at -inf (the host's
// apply_token_mask before Sampler::sample), penalties and filters included; temperature 0 is
// the argmax over the allowed tokens; unmasked rows beside masked ones are untouched.
TEST(CudaSample, MaskedTokensAreNeverDrawnAndTheRestFollowTheReference) {
  GALE_REQUIRE_GPU();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int64_t V : {50, 3001, 151936}) {
    SCOPED_TRACE(V);
    const int64_t n = 24, ld = V + 1, words = (V + 31) / 32;
    auto logits = randn(size_t(n * ld), g, 3.0f);
    std::vector<Case> rows;
    std::vector<std::vector<uint32_t>> masks(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      Case c = plain(r % 4 == 0 ? 0.0f : 0.5f + float(U(g)), r % 3 == 1 ? 20 : 0, r % 5 == 2 ? 0.8f : 1.0f,
                     r % 7 == 3 ? 0.05f : 0.0f);
      if (r % 6 == 5) {
        c.s.repetition_penalty = 1.3f;
        c.seen = {1, 7, 30};
      }
      c.s.u = U(g);
      rows.push_back(c);
      if (r % 8 == 7) continue;  // no mask
      std::vector<uint32_t>& m = masks[size_t(r)];
      m.assign(size_t(words), 0u);
      const double density = r % 8 == 1 ? 0.0 : r % 8 == 2 ? 0.5 : 0.03;  // 0: exactly one token allowed
      for (int64_t i = 0; i < V; ++i)
        if (U(g) < density) m[size_t(i / 32)] |= 1u << (i % 32);
      const int64_t one = int64_t(g() % uint32_t(V));
      m[size_t(one / 32)] |= 1u << (one % 32);
    }
    auto got = sample(logits, V, ld, rows, nullptr, &masks);
    for (int64_t r = 0; r < n; ++r) {
      SCOPED_TRACE(r);
      std::vector<float> row(logits.begin() + r * ld, logits.begin() + r * ld + V);
      const auto& m = masks[size_t(r)];
      if (!m.empty())
        for (int64_t i = 0; i < V; ++i)
          if (!((m[size_t(i / 32)] >> (i % 32)) & 1u)) row[size_t(i)] = -INFINITY;
      const int32_t id = got[size_t(r)];
      ASSERT_TRUE(id >= 0 && id < V) << id;
      if (!m.empty()) EXPECT_TRUE((m[size_t(id / 32)] >> (id % 32)) & 1u) << "drew masked token " << id;
      const Kept k = reference(row, rows[size_t(r)]);
      bool kept = false;
      for (size_t j = 0; j < k.ids.size(); ++j) kept = kept || (k.ids[j] == id && k.p[j] > 0);
      EXPECT_TRUE(kept) << "drew " << id << " outside the reference's kept set";
      if (r < 6) expect_intervals_masked(row, rows[size_t(r)], m);
    }
  }
}

// A mask that allows nothing: every logit is -inf, and the row gives token 0 (the engine's
// matcher refuses it and fails the request with one error).
TEST(CudaSample, AnEmptyMaskGivesTokenZero) {
  GALE_REQUIRE_GPU();
  const int64_t V = 300;
  std::mt19937 g(3);
  auto logits = randn(size_t(2 * V), g);
  std::vector<Case> rows = {plain(0.0f), plain(1.0f)};
  rows[1].s.u = 0.5;
  std::vector<std::vector<uint32_t>> masks(2, std::vector<uint32_t>(size_t((V + 31) / 32), 0u));
  EXPECT_EQ(sample(logits, V, V, rows, nullptr, &masks), (std::vector<int32_t>{0, 0}));
}

TEST(CudaSample, BadParametersAreRejected) {
  GALE_REQUIRE_GPU();
  const int64_t V = 16;
  DevBuf d_l(V * 4 * 2), d_rows(sizeof(SampleRow) * 2), d_ids(64), d_out(8);
  const cuda::SampleParams good{d_l.as<float>(), V, 2, V, d_rows.as<SampleRow>(), d_ids.as<int32_t>(), 4,
                                d_ids.as<int32_t>(), d_ids.as<int32_t>(), 4, d_out.as<int32_t>()};
  auto rejects = [&](auto change, const char* what) {
    cuda::SampleParams p = good;
    change(p);
    EXPECT_EQ(cuda::sample(p, nullptr), cudaErrorInvalidValue) << what;
  };
  rejects([](cuda::SampleParams& p) { p.n = -1; }, "n < 0");
  rejects([](cuda::SampleParams& p) { p.vocab = 0; }, "empty vocabulary");
  rejects([](cuda::SampleParams& p) { p.vocab = p.ld = cuda::kSampleMaxVocab + 1; }, "vocabulary too large");
  rejects([](cuda::SampleParams& p) { p.ld = p.vocab - 1; }, "ld < vocab");
  rejects([](cuda::SampleParams& p) { p.logits = nullptr; }, "no logits");
  rejects([](cuda::SampleParams& p) { p.rows = nullptr; }, "no rows");
  rejects([](cuda::SampleParams& p) { p.out = nullptr; }, "no out");
  rejects([](cuda::SampleParams& p) { p.seen_ids = nullptr; }, "no seen ids");
  rejects([](cuda::SampleParams& p) { p.output_counts = nullptr; }, "no counts");
  rejects([](cuda::SampleParams& p) { p.n_output_ids = -2; }, "negative pool");
  rejects([](cuda::SampleParams& p) { p.n_mask_words = 1; }, "masks without a pointer");
  rejects([](cuda::SampleParams& p) { p.n_mask_words = -1; }, "negative mask pool");
  SampleRow m;
  m.mask_off = 0;
  EXPECT_TRUE(cuda::sample_mask_valid(m, 64, 2));
  EXPECT_FALSE(cuda::sample_mask_valid(m, 65, 2)) << "mask shorter than the vocabulary";
  m.mask_off = 1;
  EXPECT_FALSE(cuda::sample_mask_valid(m, 64, 2)) << "mask past the pool";
  m.mask_off = -1;
  EXPECT_TRUE(cuda::sample_mask_valid(m, 64, 0)) << "no mask";

  const auto bad_row = [](auto change) {
    SampleRow r;
    r.temperature = 1.0f;
    change(r);
    return !cuda::sample_row_valid(r, 4, 4);
  };
  EXPECT_FALSE(bad_row([](SampleRow&) {}));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.temperature = -1.0f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.temperature = NAN; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.temperature = INFINITY; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.top_k = -1; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.top_p = 0.0f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.top_p = 1.5f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.min_p = -0.1f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.min_p = 1.1f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.repetition_penalty = 0.0f; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.presence_penalty = NAN; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.u = 1.0; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.u = -0.25; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.seen_off = 2, r.n_seen = 3; }));
  EXPECT_TRUE(bad_row([](SampleRow& r) { r.output_off = -1, r.n_output = 1; }));

  // A bad row that reaches the kernel anyway gets -1; the good row beside it is sampled.
  std::vector<float> logits(size_t(2 * V), 0.0f);
  logits[5] = logits[V + 9] = 10.0f;
  Case ok = plain(1.0f, 1), bad = plain(1.0f, 1);
  bad.s.top_p = 2.0f;
  EXPECT_EQ(sample(logits, V, V, {bad, ok}), (std::vector<int32_t>{-1, 9}));
}

}  // namespace
}  // namespace gale
