// The Engine with real models: many requests batched together produce what each produces alone
// (greedy and seeded sampling), the prefix cache changes nothing but the work done, a KV budget
// small enough to force preemption still completes everything identically, and no block leaks.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "model/model_loader.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

struct Case {
  std::string model;  // folder
  bool text;          // prompts from the tokenizer (bundled models) or random ids (fixtures)
};

std::vector<RequestParams> make_requests(const Case& c, const Transformer& m, bool sampled) {
  std::vector<RequestParams> out;
  const std::vector<std::string> texts = {
      "def fibonacci(n):", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n        self.items = []\n",
      "# Sort a list of numbers\ndef sort_numbers(xs):\n    return", "x = 1", "for i in range(10):\n    print(i)\n"
      "    if i % 2 == 0:\n        continue\n    total += i * i\nreturn total\n\ndef main():\n"};
  std::unique_ptr<Tokenizer> tok = c.text ? Tokenizer::load(c.model) : nullptr;
  Rng rng(3);
  for (size_t i = 0; i < 6; ++i) {
    RequestParams p;
    if (tok) {
      p.prompt = tok->encode(texts[i]);
    } else {
      size_t n = 3 + (i * 37) % 90;
      for (size_t k = 0; k < n; ++k) p.prompt.push_back(int32_t(rng.next() % uint64_t(m.config().vocab_size)));
    }
    p.max_tokens = 12 + int64_t(i % 3) * 6;
    p.ignore_eos = true;
    if (sampled) {
      p.sampling.temperature = 0.8f;
      p.sampling.top_p = 0.95f;
      p.sampling.seed = 100 + i;
    }
    out.push_back(p);
  }
  return out;
}

std::vector<int32_t> alone(Transformer& m, const RequestParams& p) {
  Generator gen(m, nullptr);
  GenerateRequest g;
  g.prompt = p.prompt;
  g.max_new_tokens = p.max_tokens;
  g.sampling = p.sampling;
  g.ignore_eos = p.ignore_eos;
  return gen.generate(g).ids;
}

// Runs all requests in one engine; returns the ids of each (by index) and checks no block leaks.
std::vector<std::vector<int32_t>> together(Transformer& m, const std::vector<RequestParams>& reqs, EngineConfig ec,
                                           EngineStats* stats_out = nullptr) {
  Engine e(m, nullptr, ec);
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
  std::vector<std::vector<int32_t>> ids(reqs.size());
  int steps = 0;
  while (e.has_unfinished()) {
    for (RequestOutput& o : e.step()) {
      auto& v = ids[index.at(o.id)];
      v.insert(v.end(), o.new_ids.begin(), o.new_ids.end());
    }
    EXPECT_LT(++steps, 100000);
  }
  EngineStats st = e.stats();
  EXPECT_EQ(st.running + st.waiting, 0);
  EXPECT_EQ(st.kv_blocks_free + st.kv_blocks_cached, st.kv_blocks_total);
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, st.kv_blocks_total) << "blocks leaked";
  if (stats_out) *stats_out = st;
  return ids;
}

class EngineModels : public ::testing::TestWithParam<Case> {};

TEST_P(EngineModels, BatchedEqualsOneAtATime) {
  LoadedModel lm = load_model(GetParam().model, ActDType::F32);
  for (bool sampled : {false, true}) {
    SCOPED_TRACE(sampled ? "seeded sampling" : "greedy");
    std::vector<RequestParams> reqs = make_requests(GetParam(), *lm.model, sampled);
    std::vector<std::vector<int32_t>> expect;
    for (auto& p : reqs) expect.push_back(alone(*lm.model, p));
    for (bool prefix : {false, true}) {
      EngineConfig ec;
      ec.max_num_seqs = 4;             // later requests join as earlier ones finish
      ec.max_num_batched_tokens = 40;  // long prompts are chunked next to running decodes
      ec.prefix_cache = prefix;
      ec.kv_cache_bytes = 64 << 20;
      auto got = together(*lm.model, reqs, ec);
      for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i], expect[i]) << "request " << i << " prefix " << prefix;
    }
  }
}

TEST_P(EngineModels, PreemptionUnderATinyKvBudgetKeepsOutputs) {
  LoadedModel lm = load_model(GetParam().model, ActDType::F32);
  std::vector<RequestParams> reqs = make_requests(GetParam(), *lm.model, false);
  std::vector<std::vector<int32_t>> expect;
  int64_t longest = 0;
  for (auto& p : reqs) {
    expect.push_back(alone(*lm.model, p));
    longest = std::max<int64_t>(longest, int64_t(p.prompt.size()) + p.max_tokens);
  }
  const int64_t bs = 4;
  EngineConfig ec;
  ec.block_size = bs;
  ec.max_num_seqs = 6;
  ec.max_num_batched_tokens = 32;
  // Room for the longest request and a little more: running six at once must preempt.
  ec.kv_cache_bytes = ((longest + bs - 1) / bs + 3) * bs *
                      int64_t(KVCache::bytes_per_token(lm.model->config(), lm.model->kv_dtype()));
  for (bool prefix : {false, true}) {
    ec.prefix_cache = prefix;
    EngineStats st;
    auto got = together(*lm.model, reqs, ec, &st);
    EXPECT_GT(st.preemptions, 0);
    for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i], expect[i]) << "request " << i << " prefix " << prefix;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineModels,
                         ::testing::Values(Case{bundled("default"), true}, Case{bundled("draft"), true},
                                           Case{test::fixtures_dir() + "/models/llama-f32", false},
                                           Case{test::fixtures_dir() + "/models/qwen3-f32", false},
                                           Case{test::fixtures_dir() + "/models/mixtral-f32", false},
                                           Case{test::fixtures_dir() + "/models/mistral-bf16", false}),
                         [](const auto& info) {
                           std::string n = info.param.model.substr(info.param.model.rfind('/') + 1);
                           for (auto& ch : n) if (!isalnum(uint8_t(ch))) ch = '_';
                           return n;
                         });

// A request whose prompt is mostly cached gets the logprobs of a cold run.
TEST(Engine, PrefixCacheHitGivesTheLogitsOfAColdRun) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  const std::string system = "# Utilities for parsing configuration files.\nimport json\nimport os\n\n\n"
                             "def load_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\n";
  std::vector<RequestParams> reqs;
  for (const char* q : {"def save_config(path, cfg):", "def merge(a, b):", "class Config:"}) {
    RequestParams p;
    p.prompt = tok->encode(system + q);
    p.max_tokens = 10;
    p.top_logprobs = 5;
    reqs.push_back(p);
  }
  auto run = [&](bool prefix, EngineStats& st) {
    EngineConfig ec;
    ec.prefix_cache = prefix;
    ec.max_num_seqs = 1;  // one after another: the second and third find the first's blocks
    ec.kv_cache_bytes = 16 << 20;
    Engine e(*lm.model, tok.get(), ec);
    std::vector<std::vector<TokenLogprob>> lps(reqs.size());
    std::map<uint64_t, size_t> index;
    for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
    while (e.has_unfinished())
      for (RequestOutput& o : e.step()) {
        auto& v = lps[index.at(o.id)];
        v.insert(v.end(), o.logprobs.begin(), o.logprobs.end());
        if (o.finished && index.at(o.id) > 0 && prefix) {
          EXPECT_GT(o.cached_prompt_tokens, 40);
        }
      }
    st = e.stats();
    return lps;
  };
  EngineStats warm_st, cold_st;
  auto warm = run(true, warm_st), cold = run(false, cold_st);
  EXPECT_GT(warm_st.prefix_cache_hit_tokens, 80);
  EXPECT_EQ(cold_st.prefix_cache_hit_tokens, 0);
  EXPECT_LT(warm_st.computed_tokens, cold_st.computed_tokens - 80);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(warm[i].size(), cold[i].size());
    for (size_t t = 0; t < warm[i].size(); ++t) {
      EXPECT_EQ(warm[i][t].id, cold[i][t].id);
      EXPECT_NEAR(warm[i][t].logprob, cold[i][t].logprob, 1e-4);
      ASSERT_EQ(warm[i][t].top.size(), 5u);
      for (size_t k = 0; k < 5; ++k) {
        EXPECT_EQ(warm[i][t].top[k].first, cold[i][t].top[k].first);
        EXPECT_NEAR(warm[i][t].top[k].second, cold[i][t].top[k].second, 1e-4);
      }
    }
  }
}

TEST(Engine, AbortFreesBlocksAndReportsAbort) {
  LoadedModel lm = load_model(bundled("draft"), ActDType::F32);
  EngineConfig ec;
  ec.kv_cache_bytes = 8 << 20;
  Engine e(*lm.model, nullptr, ec);
  RequestParams p;
  p.prompt = {5, 6, 7, 8, 9};
  p.max_tokens = 50;
  p.ignore_eos = true;
  uint64_t a = e.add_request(p), b = e.add_request(p);
  e.step();
  e.step();
  e.abort(a);
  bool saw_abort = false;
  int64_t b_tokens = 0;
  while (e.has_unfinished())
    for (RequestOutput& o : e.step()) {
      if (o.id == a) {
        EXPECT_TRUE(o.finished);
        EXPECT_EQ(o.finish_reason, "abort");
        saw_abort = true;
      }
      if (o.id == b) b_tokens += int64_t(o.new_ids.size());
    }
  EXPECT_TRUE(saw_abort);
  EXPECT_EQ(b_tokens, 50 - 2);
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total);
}

TEST(Engine, RejectsRequestsThatCannotFit) {
  LoadedModel lm = load_model(bundled("draft"), ActDType::F32);
  EngineConfig ec;
  ec.kv_cache_bytes = 8 << 20;
  Engine e(*lm.model, nullptr, ec);
  RequestParams p;
  p.prompt = {1, 2, 3};
  p.max_tokens = 5000;  // past the 1024-token context
  EXPECT_THROW(e.add_request(p), Error);
  p.max_tokens = 5;
  p.prompt = {1, 99999};
  EXPECT_THROW(e.add_request(p), Error);
  p.prompt = {};
  EXPECT_THROW(e.add_request(p), Error);
  EXPECT_FALSE(e.has_unfinished());
}

}  // namespace
