// Speculative decoding (issue 19): the scheduler's proposals, the acceptance rule (greedy: token
// for token; sampling: the target's distribution, by a chi-square test) and the engine's
// lossless greedy output with a draft model and with a model-free proposer.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>

#include "core/error.h"
#include "engine/engine.h"
#include "model/model_loader.h"
#include "runtime/scheduler.h"
#include "runtime/spec_decode.h"
#include "runtime/token_proposer.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

// ---- scheduler ---------------------------------------------------------------------------------

SchedulerConfig small_sched(int64_t budget = 64) {
  SchedulerConfig c;
  c.num_blocks = 32;
  c.block_size = 4;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = budget;
  return c;
}

// Prefills sequences 1, 2, ... of the given prompt lengths and appends one sampled token to each:
// they decode next.
void to_decode(Scheduler& s, std::vector<int> lens) {
  for (size_t i = 0; i < lens.size(); ++i) {
    std::vector<int32_t> prompt(static_cast<size_t>(lens[i]), 0);
    std::iota(prompt.begin(), prompt.end(), 1);
    s.add(i + 1, prompt);
  }
  SchedulerOutput o = s.schedule();
  ASSERT_EQ(o.seqs.size(), lens.size());
  s.commit(o);
  for (size_t i = 0; i < lens.size(); ++i) s.append_token(i + 1, 100);
}

TEST(SpecScheduler, AVerifyIsOneChunkAndRollsBack) {
  Scheduler s(small_sched());
  to_decode(s, {6});
  ASSERT_TRUE(s.can_propose(1));
  const std::vector<int32_t> props = {7, 8, 9};
  s.propose(1, props);
  EXPECT_FALSE(s.can_propose(1));
  SchedulerOutput o = s.schedule();
  ASSERT_EQ(o.seqs.size(), 1u);
  EXPECT_EQ(o.seqs[0].start_pos, 6);
  EXPECT_EQ(o.seqs[0].num_tokens, 4);
  EXPECT_EQ(o.seqs[0].num_spec, 3);
  EXPECT_TRUE(o.seqs[0].sample);
  EXPECT_EQ(int64_t(o.seqs[0].block_table.size()), 3);  // 10 positions in blocks of 4
  s.set_token(1, 8, 42);                                  // a placeholder filled after the schedule
  EXPECT_EQ(s.tokens(1)[8], 42);
  s.commit(o);
  // One proposal accepted: two rejected go, the target's token comes.
  s.rollback(1, 2);
  s.append_token(1, 55);
  EXPECT_EQ(s.tokens(1).size(), 9u);
  EXPECT_TRUE(s.can_propose(1));
  o = s.schedule();
  ASSERT_EQ(o.seqs.size(), 1u);
  EXPECT_EQ(o.seqs[0].start_pos, 8);
  EXPECT_EQ(o.seqs[0].num_tokens, 1);
  EXPECT_EQ(o.seqs[0].num_spec, 0);
  s.commit(o);
  s.finish(1);
  s.clear_prefix_cache();
  EXPECT_EQ(s.pool().num_free(), s.pool().num_blocks());
}

TEST(SpecScheduler, ProposalsAreTrimmedToTheBudgetAndDroppedWhenLeftOut) {
  Scheduler s(small_sched(5));
  to_decode(s, {3, 2});
  const std::vector<int32_t> props = {7, 8, 9};
  s.propose(1, props);
  s.propose(2, props);
  SchedulerOutput o = s.schedule();  // budget 5: 4 for the first, 1 for the second
  ASSERT_EQ(o.seqs.size(), 2u);
  EXPECT_EQ(o.seqs[0].num_tokens, 4);
  EXPECT_EQ(o.seqs[0].num_spec, 3);
  EXPECT_EQ(o.seqs[1].num_tokens, 1);
  EXPECT_EQ(o.seqs[1].num_spec, 0);
  EXPECT_EQ(s.tokens(2).size(), 3u);  // its proposals were cut
  s.commit(o);
  s.rollback(1, 3);
  s.append_token(1, 1);
  s.append_token(2, 1);
  s.propose(2, props);
  // Budget 5, the first takes 1, the second 4.
  o = s.schedule();
  ASSERT_EQ(o.seqs.size(), 2u);
  EXPECT_EQ(o.seqs[1].num_spec, 3);
  s.commit(o);
  s.finish(1);
  s.finish(2);
}

// ---- acceptance ----------------------------------------------------------------------------------

// Chi-square statistic of counts against probabilities (cells with p = 0 must have no count).
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& p, int64_t n, int* df) {
  double x2 = 0;
  *df = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) {
      EXPECT_EQ(counts[i], 0) << "cell " << i << " has probability 0";
      continue;
    }
    const double e = p[i] * double(n);
    x2 += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++*df;
  }
  return x2;
}

// Upper 0.1 % points of the chi-square distribution (tables): a correct sampler fails a check
// with probability 1e-3 (the seeds are fixed, so a run either passes or fails every time).
double chi2_999(int df) {
  static const std::map<int, double> t = {{3, 16.27}, {4, 18.47}, {5, 20.52}, {6, 22.46}, {7, 24.32},
                                          {8, 26.12}, {9, 27.88}, {10, 29.59}, {11, 31.26}, {12, 32.91},
                                          {13, 34.53}, {14, 36.12}, {15, 37.70}, {16, 39.25}, {17, 40.79},
                                          {18, 42.31}, {19, 43.82}, {20, 45.31}, {24, 51.18}, {25, 52.62},
                                          {30, 59.70}, {35, 66.62}};
  auto it = t.lower_bound(df);
  return it == t.end() ? 1e300 : it->second;  // a larger df's point is a conservative bound
}

constexpr int kV = 6;

// Softmax of logits (a proposer's q for the draws below).
std::vector<float> softmax(const std::vector<float>& l) {
  std::vector<float> q(l.size());
  float m = *std::max_element(l.begin(), l.end());
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += (q[i] = std::exp(l[i] - m));
  for (float& v : q) v = float(v / s);
  return q;
}

int32_t draw_from(const std::vector<float>& q, double u) {
  double acc = 0;
  for (size_t i = 0; i < q.size(); ++i)
    if (q[i] > 0 && u < (acc += q[i])) return int32_t(i);
  return int32_t(q.size()) - 1;
}

// The target's logits at the first and second position (the second depends on the first token).
std::vector<float> target_row(int pos, int32_t prev) {
  std::vector<float> l(kV);
  for (int i = 0; i < kV; ++i) l[size_t(i)] = pos == 0 ? 0.4f * float(i % 4) - 0.3f * float(i == 2) : 0.5f * float((i + prev) % kV) - 0.2f * float(i);
  return l;
}

// Two tokens by speculative sampling against two by the plain sampler: the joint distribution
// of (first, second) must be the target's. The proposer draws its two proposals from q (a draft's
// distribution, or a point mass: q empty, the proposal fixed or drawn from a guess), the verify
// takes what it takes and, on a rejection, the second token comes from a plain step as the engine
// would do. Penalties, temperature, top-k and min-p are on, so p is the Sampler's, not a softmax.
void check_joint(bool point_mass, SamplingParams sp, uint64_t seed) {
  const std::vector<int32_t> prompt = {1, 3};
  // The expected joint distribution, from the plain sampler's distributions.
  std::vector<double> want(kV * kV, 0.0);
  {
    Sampler s0(sp, prompt);
    std::vector<int32_t> idx;
    std::vector<double> d1, d2;
    std::vector<float> l = target_row(0, 0);
    token_distribution(sp, s0.seen_ids(), s0.output_ids(), s0.output_counts(), l, idx, d1);
    for (int a = 0; a < kV; ++a) {
      if (d1[size_t(a)] == 0) continue;
      Sampler s1(sp, prompt);
      s1.accept(a);
      std::vector<float> l2 = target_row(1, a);
      token_distribution(sp, s1.seen_ids(), s1.output_ids(), s1.output_counts(), l2, idx, d2);
      for (int b = 0; b < kV; ++b) want[size_t(a * kV + b)] = d1[size_t(a)] * d2[size_t(b)];
    }
  }
  const int64_t N = 40000;
  std::vector<int64_t> counts(kV * kV, 0);
  Rng prop_rng(seed);
  int64_t accepted = 0;
  for (int64_t n = 0; n < N; ++n) {
    SamplingParams p = sp;
    p.seed = seed * 1000003 + uint64_t(n);
    Sampler s(p, prompt);
    // The proposer: a draft's distributions (not the target's) or guesses of fixed tokens.
    std::vector<float> q1 = softmax({0.3f, 0.1f, 0.9f, -0.5f, 0.0f, 0.2f});
    const int32_t d1 = point_mass ? (n % 3 == 0 ? 2 : draw_from(q1, prop_rng.uniform())) : draw_from(q1, prop_rng.uniform());
    std::vector<float> q2 = softmax({0.1f * float(d1), 0.5f, -0.2f, 0.4f, 0.0f, 0.3f});
    const int32_t d2 = draw_from(q2, prop_rng.uniform());
    bool ok = false;
    std::vector<float> l = target_row(0, 0);
    const int32_t t1 = verify_token(s, l, d1, point_mass ? std::span<const float>() : q1, &ok);
    int32_t t2;
    if (ok) {
      ++accepted;
      std::vector<float> l2 = target_row(1, t1);
      bool ok2 = false;
      t2 = verify_token(s, l2, d2, point_mass ? std::span<const float>() : q2, &ok2);
    } else {  // the next step decodes plainly
      std::vector<float> l2 = target_row(1, t1);
      t2 = s.sample(l2);
    }
    ++counts[size_t(t1 * kV + t2)];
  }
  EXPECT_GT(accepted, N / 10);  // the test exercises both branches
  EXPECT_LT(accepted, N * 9 / 10);
  int df = 0;
  const double x2 = chi_square(counts, want, N, &df);
  EXPECT_LT(x2, chi2_999(df)) << "df " << df;
}

// False-alarm rate: each check_joint is one chi-square test at the 0.1 % level (df up to 35), so a
// correct implementation fails this test with probability about 4e-3 over its four checks; the
// seeds are fixed, so the outcome is reproducible. A wrong rule (e.g. accepting with p(x) alone
// for a draft's q, or resampling from p instead of max(0, p - q)) gives statistics in the
// hundreds at N = 40000.
TEST(SpecAcceptance, SamplingReproducesTheTargetsDistribution) {
  SamplingParams sp;
  sp.temperature = 0.9f;
  check_joint(false, sp, 11);
  check_joint(true, sp, 12);
  sp.top_k = 5;
  sp.min_p = 0.05f;
  sp.presence_penalty = 0.4f;
  sp.repetition_penalty = 1.2f;
  check_joint(false, sp, 13);
  check_joint(true, sp, 14);
}

TEST(SpecAcceptance, GreedyAcceptsExactlyTheArgmax) {
  SamplingParams sp;  // greedy, with a penalty: the argmax of the penalized logits
  sp.repetition_penalty = 1.5f;
  Sampler s(sp, std::vector<int32_t>{3});
  std::vector<float> l = {0.1f, 0.2f, 0.0f, 1.0f, 0.9f, 0.3f};  // 3 is penalized below 4
  bool ok = true;
  EXPECT_EQ(verify_token(s, l, 3, {}, &ok), 4);
  EXPECT_FALSE(ok);
  l = {0.1f, 0.2f, 0.0f, 1.0f, 0.9f, 0.3f};
  EXPECT_EQ(verify_token(s, l, 3, {}, &ok), 3);  // 4 is seen now too: 1.0 / 1.5 beats 0.9 / 1.5
  EXPECT_TRUE(ok);
  l = {0.1f, 0.2f, 0.0f, 1.0f, 0.9f, 0.3f};
  EXPECT_EQ(verify_token(s, l, -1, {}, &ok), 3);  // the bonus position: plain greedy
  EXPECT_FALSE(ok);
}

// ---- engine: lossless greedy ----------------------------------------------------------------------

// A test-only model-free proposer: it knows each prompt's plain greedy continuation and proposes
// it, wrong at every third position (so verifies end both in rejections and in full acceptance),
// and nothing once the context leaves the known continuation.
class OracleProposer : public TokenProposer {
 public:
  explicit OracleProposer(std::vector<std::vector<int32_t>> full, int32_t vocab) : full_(std::move(full)), vocab_(vocab) {}
  std::string_view name() const override { return "oracle"; }
  void propose(uint64_t, std::span<const int32_t> ctx, int64_t k, std::vector<int32_t>& out) override {
    out.clear();
    ++calls;
    for (const auto& f : full_) {
      if (f.size() <= ctx.size() || !std::equal(ctx.begin(), ctx.end(), f.begin())) continue;
      for (int64_t i = 0; i < k && ctx.size() + size_t(i) < f.size(); ++i) {
        const size_t at = ctx.size() + size_t(i);
        out.push_back(at % 3 == 2 ? (f[at] + 1) % vocab_ : f[at]);
      }
      return;
    }
  }
  void finish(uint64_t, std::span<const int32_t>) override { ++finished; }
  int64_t calls = 0, finished = 0;

 private:
  std::vector<std::vector<int32_t>> full_;
  int32_t vocab_;
};

struct RunResult {
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::string> text;
  std::vector<std::string> reason;
  std::vector<size_t> logprobs;
  EngineStats stats;
};

RunResult run(Transformer& m, const Tokenizer* tok, const std::vector<RequestParams>& reqs, EngineConfig ec,
              Transformer* draft = nullptr) {
  Engine e(m, tok, ec, draft);
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
  RunResult r;
  r.ids.resize(reqs.size());
  r.text.resize(reqs.size());
  r.reason.resize(reqs.size());
  r.logprobs.resize(reqs.size());
  for (int step = 0; e.has_unfinished(); ++step) {
    for (RequestOutput& o : e.step()) {
      const size_t i = index.at(o.id);
      r.ids[i].insert(r.ids[i].end(), o.new_ids.begin(), o.new_ids.end());
      r.text[i] += o.new_text;
      r.logprobs[i] += o.logprobs.size();
      EXPECT_EQ(o.completion_tokens, int64_t(r.ids[i].size()));
      if (o.finished) r.reason[i] = o.finish_reason;
    }
    if (step > 100000) ADD_FAILURE() << "does not finish";
  }
  r.stats = e.stats();
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total) << "blocks leaked";
  return r;
}

std::vector<RequestParams> random_requests(const ModelConfig& c, size_t n, int64_t max_tokens, uint64_t seed) {
  std::vector<RequestParams> out;
  Rng rng(seed);
  for (size_t i = 0; i < n; ++i) {
    RequestParams p;
    for (size_t k = 0; k < 3 + 7 * i; ++k) p.prompt.push_back(int32_t(rng.next() % uint64_t(c.vocab_size)));
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    out.push_back(p);
  }
  return out;
}

std::vector<std::vector<int32_t>> full_sequences(const std::vector<RequestParams>& reqs, const RunResult& r) {
  std::vector<std::vector<int32_t>> full;
  for (size_t i = 0; i < reqs.size(); ++i) {
    full.push_back(reqs[i].prompt);
    full.back().insert(full.back().end(), r.ids[i].begin(), r.ids[i].end());
  }
  return full;
}

// Every model fixture: a model-free proposer that is right two times in three gives the plain
// greedy tokens, one request at a time and several together.
TEST(SpecEngine, GreedyIsLosslessOnEveryFixture) {
  for (const std::string& name : test::model_fixture_names()) {
    SCOPED_TRACE(name);
    const std::string path = test::fixtures_dir() + "/models/" + name;
    LoadedModel lm = load_model(path, ActDType::F32);
    const ModelConfig& c = lm.model->config();
    if (c.rope.type == RopeType::Dynamic) continue;  // unsupported (the engine says so)
    std::vector<RequestParams> reqs = random_requests(c, 3, 20, 5);
    EngineConfig ec;
    ec.kv_cache_bytes = 8 << 20;
    const RunResult plain = run(*lm.model, nullptr, reqs, ec);
    EngineConfig sc = ec;
    auto oracle = std::make_shared<OracleProposer>(full_sequences(reqs, plain), int32_t(c.vocab_size));
    sc.proposer = oracle;
    sc.num_speculative_tokens = 4;
    sc.speculative_adaptive = false;
    const RunResult spec = run(*lm.model, nullptr, reqs, sc);
    EXPECT_EQ(spec.ids, plain.ids);
    EXPECT_GT(spec.stats.spec_accepted_tokens, 0);
    EXPECT_LT(spec.stats.spec_accepted_tokens, spec.stats.spec_proposed_tokens);
    EXPECT_EQ(oracle->finished, 3);
  }
}

// The bundled pair: the draft proposes. Greedy output equals the plain run's, with stop strings,
// logprobs, n > 1 (the same prompt twice: the prefix cache shares it), and under a KV cache small
// enough to preempt.
TEST(SpecEngine, GreedyIsLosslessWithTheBundledDraft) {
  LoadedModel target = load_model(bundled("default"), ActDType::F32);
  LoadedModel draft = load_model(bundled("draft"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  std::vector<RequestParams> reqs;
  for (const char* text : {"import os\n\ndef main():\n", "The quick brown fox", "The quick brown fox",
                           "for i in range(10):\n    print(", "Once upon a time"}) {
    RequestParams p;
    p.prompt = tok->encode(text);
    p.max_tokens = 40;
    reqs.push_back(p);
  }
  reqs[1].top_logprobs = 2;
  reqs[3].stop = {")\n"};
  reqs[4].sampling.repetition_penalty = 1.3f;  // greedy with a penalty: the host path
  for (int64_t kv : {int64_t(16) << 20, int64_t(8 * 160) << 10}) {  // 8 blocks of 160 KiB: preemptions
    SCOPED_TRACE(kv);
    EngineConfig ec;
    ec.kv_cache_bytes = kv;
    ec.max_num_batched_tokens = 64;
    const RunResult plain = run(*target.model, tok.get(), reqs, ec, draft.model.get());
    EngineConfig sc = ec;
    sc.num_speculative_tokens = 4;
    sc.speculative_adaptive = false;
    const RunResult spec = run(*target.model, tok.get(), reqs, sc, draft.model.get());
    EXPECT_EQ(spec.ids, plain.ids);
    EXPECT_EQ(spec.text, plain.text);
    EXPECT_EQ(spec.reason, plain.reason);
    EXPECT_EQ(spec.logprobs, plain.logprobs);
    EXPECT_EQ(spec.logprobs[1], spec.ids[1].size());
    EXPECT_GT(spec.stats.spec_verifies, 0);
    EXPECT_GT(spec.stats.mean_accepted_length(), 1.5);  // the bundled draft is a good guesser
    if (kv < (2 << 20)) EXPECT_GT(spec.stats.preemptions, 0);
    // auto: the controller may choose any k, the output stays the same.
    sc.speculative_adaptive = true;
    EXPECT_EQ(run(*target.model, tok.get(), reqs, sc, draft.model.get()).ids, plain.ids);
  }
}

// Sampling with the draft: not the plain run's tokens (the draws differ), but complete outputs,
// one logprob per token, max_tokens honoured, and a request that asks "off" never verifies.
TEST(SpecEngine, SamplingRunsAndOffPerRequest) {
  LoadedModel target = load_model(bundled("default"), ActDType::F32);
  LoadedModel draft = load_model(bundled("draft"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  RequestParams p;
  p.prompt = tok->encode("def add(a, b):\n");
  p.max_tokens = 30;
  p.ignore_eos = true;
  p.sampling.temperature = 0.8f;
  p.sampling.top_p = 0.9f;
  p.sampling.seed = 3;
  p.top_logprobs = 0;
  EngineConfig ec;
  ec.kv_cache_bytes = 16 << 20;
  ec.num_speculative_tokens = 3;
  ec.speculative_adaptive = false;
  RunResult r = run(*target.model, tok.get(), {p, p}, ec, draft.model.get());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(r.ids[i].size(), 30u);
    EXPECT_EQ(r.logprobs[i], 30u);
  }
  EXPECT_GT(r.stats.spec_accepted_tokens, 0);
  p.speculative = false;
  r = run(*target.model, tok.get(), {p}, ec, draft.model.get());
  EXPECT_EQ(r.stats.spec_verifies, 0);
  EXPECT_EQ(r.ids[0].size(), 30u);
}

TEST(SpecEngine, BadConfigurationsAreOneClearError) {
  LoadedModel target = load_model(bundled("default"), ActDType::F32);
  LoadedModel draft = load_model(bundled("draft"), ActDType::F32);
  EngineConfig ec;
  ec.kv_cache_bytes = 4 << 20;
  ec.num_speculative_tokens = 4;
  EXPECT_THROW(Engine(*target.model, nullptr, ec), Error);  // no proposer
  ec.proposer = std::make_shared<OracleProposer>(std::vector<std::vector<int32_t>>{}, 8192);
  EXPECT_THROW(Engine(*target.model, nullptr, ec, draft.model.get()), Error);  // two proposers
  ec.num_speculative_tokens = kMaxSpeculativeTokens + 1;
  EXPECT_THROW(Engine(*target.model, nullptr, ec), Error);
  ec.num_speculative_tokens = -1;
  EXPECT_THROW(Engine(*target.model, nullptr, ec), Error);
}

// The controller: a proposer that is always right at negligible cost earns k_max at batch 1;
// one that is never right turns speculation off (but for its rare probes); compute-bound steps
// (cost in proportion to tokens) never pay, whatever the acceptance.
TEST(SpecController, ChoosesKFromAcceptanceAndStepCost) {
  SpecControllerConfig cfg;
  cfg.k_max = 4;
  SpecController good(cfg), bad(cfg), heavy(cfg);
  EXPECT_EQ(good.choose_k(1), 0);  // nothing measured: plain decoding first
  for (int i = 0; i < 300; ++i) {
    for (SpecController* c : {&good, &bad}) {
      for (int64_t t = 1; t <= 5; ++t) c->observe_step(t, 0.010 + 0.0001 * double(t));  // 10 ms + 0.1 ms a token
      c->observe_proposer(1, 4, 0.0004);
    }
    for (int64_t b : {32, 64, 96, 128, 160}) heavy.observe_step(b, 0.001 * double(b));
    heavy.observe_proposer(32, 4, 0.004);
    good.observe_verify(4, 4);
    bad.observe_verify(4, 0);
    heavy.observe_verify(4, 2);
  }
  EXPECT_GT(good.acceptance(), 0.95);
  EXPECT_LT(bad.acceptance(), 0.05);
  EXPECT_EQ(good.choose_k(1), 4);
  int on = 0;
  for (int i = 0; i < 640; ++i) on += bad.choose_k(1) > 0;
  EXPECT_LE(on, 10);  // probes only
  EXPECT_EQ(heavy.choose_k(32), 0);
  // Verify sizes above every measured step are tried once each before being judged.
  SpecController fresh(cfg);
  fresh.observe_step(2, 0.01);
  std::vector<int64_t> tried;
  for (int i = 0; i < 4; ++i) tried.push_back(fresh.choose_k(2));
  EXPECT_EQ(tried, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(fresh.choose_k(3), 0);  // a batch above every measured step: plain decoding first
}

}  // namespace
