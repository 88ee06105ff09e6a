// The whole model on the GPU (CUDA backend) against the CPU f32 forward, which the unit tests
// hold to transformers' logits: every fixture architecture (Llama, Llama dynamic RoPE, Mistral
// sliding window, Qwen2 biases, Qwen3 q/k norm, Mixtral MoE) in F32/F16/BF16 checkpoints; the
// bundled model's greedy text against transformers; chunked prefill; and the engine's batching,
// prefix cache and preemption on the GPU giving what each request gives alone.
// Built only in full builds (GALE_FIXTURES_DIR comes with gale_engine).
#ifdef GALE_FIXTURES_DIR
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "gpu_test_util.h"
#include "model/model_loader.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(std::string(GALE_FIXTURES_DIR) + "/models"))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json"))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string bundled_model() { return std::string(GALE_FIXTURES_DIR) + "/../../models/default"; }

BackendOptions cuda() {
  BackendOptions o;
  o.device = "cuda";
  return o;
}

// All-position logits of one prompt run in chunks of `chunk` tokens (0 = one pass).
std::vector<float> run(Transformer& m, const std::vector<int32_t>& ids, int64_t chunk = 0) {
  const int64_t bs = 16, n = int64_t(ids.size());
  KVCache kv(m.config(), (n + bs - 1) / bs, bs, m.kv_format(), &m.backend());
  std::vector<int32_t> table(size_t((n + bs - 1) / bs));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(table.size() - 1 - i);  // out of order
  std::vector<float> all, part;
  if (chunk == 0) chunk = n;
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t c = std::min(chunk, n - s);
    SeqStep st{std::span<const int32_t>(ids.data() + s, size_t(c)), s, table, SeqStep::Logits::All};
    m.forward({&st, 1}, kv, part);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

double rel_max_diff(const float* a, const float* b, int64_t n) {
  double d = 0, r = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    d = std::max(d, std::abs(double(a[i]) - double(b[i])));
    r = std::max(r, std::abs(double(b[i])));
  }
  return d / r;
}

class GpuFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuFixture, MatchesCpuF32AndTransformers) {
  GALE_REQUIRE_GPU();
  const std::string dir = std::string(GALE_FIXTURES_DIR) + "/models/" + GetParam();
  auto ref = read_json(dir + "/reference.json");
  auto ids = ref["prompt_ids"].get<std::vector<int32_t>>();
  LoadedModel cpu = load_model(dir, ActDType::F32);
  LoadedModel gpu = load_model(dir, cuda());
  ASSERT_FALSE(gpu.model->backend().is_cpu());
  const int64_t V = cpu.model->config().vocab_size, n = int64_t(ids.size());
  std::vector<float> lc = run(*cpu.model, ids), lg = run(*gpu.model, ids);
  ASSERT_EQ(lc.size(), lg.size());
  const bool moe = cpu.model->config().num_experts > 0;
  // Per-position max|gpu - ref| / max|ref|. bf16 activations over random tiny models move the
  // logits by a few percent; in an MoE model a near-tie in the router may send a token to
  // another expert, which changes that position a lot: there only the median is held tight.
  auto errors = [&](const std::vector<float>& a, const std::vector<float>& ref) {
    std::vector<double> e(static_cast<size_t>(n));
    for (int64_t p = 0; p < n; ++p) e[size_t(p)] = rel_max_diff(a.data() + p * V, ref.data() + p * V, V);
    std::sort(e.begin(), e.end());
    return e;
  };
  auto e = errors(lg, lc);
  const double med = e[e.size() / 2], worst = e.back();
  EXPECT_LE(med, 3e-2) << "median position's max|gpu - cpu| / max|cpu|";
  if (!moe) {
    // The tail grows with the positions sampled: 0.109 was the worst of long_yarn's 3,000
    // (H100, 2026-12-06; median 0.02, every clear argmax agreeing).
    EXPECT_LE(worst, n > 1000 ? 0.15 : 0.1) << "worst position's max|gpu - cpu| / max|cpu|";
  }
  // Argmax where transformers' winner leads clearly.
  auto argmax_ref = ref["argmax"].get<std::vector<int32_t>>();
  auto margin = ref["argmax_margin"].get<std::vector<double>>();
  int clear = 0, agree = 0;
  for (int64_t p = 0; p < n; ++p) {
    if (margin[size_t(p)] < 0.5) continue;
    ++clear;
    agree += argmax({lg.data() + p * V, size_t(V)}) == argmax_ref[size_t(p)];
  }
  ASSERT_GT(clear, 50);
  EXPECT_GE(double(agree) / clear, 0.95) << agree << " of " << clear << " clear positions agree";
  // Chunked prefill (chunks of 37 over a cached prefix: the prefill kernel's varlen path) and
  // token-by-token decode (the split-K decode kernel) give the one-pass logits. Not for
  // "dynamic" RoPE: past max_position_embeddings its frequencies follow the sequence length,
  // so keys cached earlier were rotated differently (as in transformers).
  double med_chunk = 0, med_dec = 0;
  if (cpu.model->config().rope.type != RopeType::Dynamic) {
    auto ec = errors(run(*gpu.model, ids, 37), lg), ed = errors(run(*gpu.model, ids, 1), lg);
    med_chunk = ec[ec.size() / 2];
    med_dec = ed[ed.size() / 2];
    EXPECT_LE(med_chunk, 2e-2);
    EXPECT_LE(med_dec, 2e-2);
    if (!moe) {
      EXPECT_LE(ec.back(), 5e-2);
      EXPECT_LE(ed.back(), 5e-2);
    }
  }
  std::printf("[ %s ] gpu vs cpu-f32 median %.2e worst %.2e; chunked median %.2e; decode median %.2e; argmax %d/%d\n",
              GetParam().c_str(), med, worst, med_chunk, med_dec, agree, clear);
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, GpuFixture, ::testing::ValuesIn(fixture_names()), [](const auto& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

// The trained bundled model is confident, so bf16 greedy text should follow transformers'.
TEST(GpuModel, BundledModelGreedyMatchesTransformers) {
  GALE_REQUIRE_GPU();
  auto ref = read_json(std::string(GALE_FIXTURES_DIR) + "/default_model/reference.json");
  LoadedModel lm = load_model(bundled_model(), cuda());
  for (auto& g : ref["models"]["default"]["greedy"]) {
    GenerateRequest req;
    req.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    auto want = g["ids"].get<std::vector<int32_t>>();
    req.max_new_tokens = int64_t(want.size());
    req.ignore_eos = true;
    Generator gen(*lm.model, nullptr);
    auto got = gen.generate(req).ids;
    size_t same = 0;
    while (same < got.size() && same < want.size() && got[same] == want[same]) ++same;
    std::printf("[ greedy ] %s: %zu of %zu tokens as transformers\n", g["prompt"].get<std::string>().c_str(), same,
                want.size());
    EXPECT_GE(same, size_t(24)) << g["prompt"];
  }
}

// The engine on the GPU: batching (chunked prefill next to decodes), the prefix cache and
// preemption under a tiny KV budget give each request what it gives alone, with the KV cache
// kv_cache_dtype asks for (--kv-cache-dtype).
void batching_prefix_cache_and_preemption(const std::string& kv_cache_dtype) {
  LoadOptions lo;
  lo.kv_cache_dtype = kv_cache_dtype;
  LoadedModel lm = load_model(bundled_model(), cuda(), lo);
  auto tok = Tokenizer::load(bundled_model());
  const std::vector<std::string> texts = {
      "def fibonacci(n):", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n        self.items = []\n",
      "# Sort a list of numbers\ndef sort_numbers(xs):\n    return", "import os\nimport sys\n\ndef main():\n",
      "for i in range(10):\n    print(i)\n"};
  std::vector<RequestParams> reqs;
  std::vector<std::vector<int32_t>> expect;
  std::vector<std::vector<double>> margins;
  int64_t longest = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    RequestParams p;
    p.prompt = tok->encode(texts[i]);
    p.max_tokens = 12 + int64_t(i % 3) * 6;
    p.ignore_eos = true;
    reqs.push_back(p);
    longest = std::max<int64_t>(longest, int64_t(p.prompt.size()) + p.max_tokens);
    // Alone, with the top-2 logprobs of every step: where two candidates are closer than bf16
    // can separate, a different batch shape may pick the other one.
    EngineConfig one;
    one.max_num_seqs = 1;
    one.kv_cache_bytes = 64 << 20;
    Engine e(*lm.model, nullptr, one);
    RequestParams q = p;
    q.top_logprobs = 2;
    e.add_request(q);
    std::vector<int32_t> ids;
    std::vector<double> gap;
    while (e.has_unfinished())
      for (RequestOutput& o : e.step())
        for (size_t k = 0; k < o.new_ids.size(); ++k) {
          ids.push_back(o.new_ids[k]);
          const auto& top = o.logprobs[k].top;
          gap.push_back(top.size() >= 2 ? double(top[0].second - top[1].second) : 1e9);
        }
    expect.push_back(ids);
    margins.push_back(gap);
  }
  const int64_t bs = 4;
  const int64_t tiny = ((longest + bs - 1) / bs + 3) * bs * int64_t(KVCache::bytes_per_token(lm.model->config(), lm.model->kv_dtype()));
  for (int64_t budget : {int64_t(64) << 20, tiny}) {
    for (bool prefix : {false, true}) {
      EngineConfig ec;
      ec.block_size = bs;
      ec.max_num_seqs = budget == tiny ? 6 : 4;
      ec.max_num_batched_tokens = 32;
      ec.prefix_cache = prefix;
      ec.kv_cache_bytes = budget;
      Engine e(*lm.model, nullptr, ec);
      std::map<uint64_t, size_t> index;
      for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
      std::vector<std::vector<int32_t>> got(reqs.size());
      while (e.has_unfinished())
        for (RequestOutput& o : e.step()) {
          auto& v = got[index.at(o.id)];
          v.insert(v.end(), o.new_ids.begin(), o.new_ids.end());
        }
      EngineStats st = e.stats();
      if (budget == tiny) {
        EXPECT_GT(st.preemptions, 0);
      }
      if (prefix && budget != tiny) {
        EXPECT_GT(st.prefix_cache_hit_tokens, 0);
      }
      for (size_t i = 0; i < reqs.size(); ++i) {
        SCOPED_TRACE(testing::Message() << "request " << i << " prefix " << prefix << " tiny " << (budget == tiny));
        ASSERT_EQ(got[i].size(), expect[i].size());
        size_t k = 0;
        while (k < got[i].size() && got[i][k] == expect[i][k]) ++k;
        // Identical, or parted only at a near-tie (top-2 logprobs within 0.1) of the lone run.
        if (k < got[i].size()) {
          std::printf("[ engine ] request %zu parts at token %zu of %zu, top-2 gap %.4f\n", i, k, got[i].size(),
                      margins[i][k]);
          EXPECT_LT(margins[i][k], 0.1) << "parted at token " << k << " where the lone run was clear";
        }
      }
    }
  }
}

TEST(GpuEngine, BatchingPrefixCacheAndPreemptionKeepOutputs) {
  GALE_REQUIRE_GPU();
  batching_prefix_cache_and_preemption("auto");
}

// The E4M3 cache (decode, prefill and the K/V writes in their fp8 variants; blocks shared,
// copied on write, recomputed after preemption).
TEST(GpuEngine, Fp8KvCacheBatchingPrefixCacheAndPreemptionKeepOutputs) {
  GALE_REQUIRE_GPU();
  batching_prefix_cache_and_preemption("fp8");
}

// The bundled model's logits with an E4M3 cache against a bf16 one, both on the GPU: the
// bounds of the CPU's KvCacheFp8.LogitsCloseToABf16Cache (tests/unit/kv_cache_fp8_test.cpp),
// where the same comparison with f32 activations shows mean KL 1.3e-3, max 1.3e-2.
TEST(GpuModel, Fp8KvCacheLogitsCloseToBf16) {
  GALE_REQUIRE_GPU();
  LoadOptions lo;
  lo.kv_cache_dtype = "fp8";
  LoadedModel bf16 = load_model(bundled_model(), cuda()), fp8 = load_model(bundled_model(), cuda(), lo);
  ASSERT_EQ(fp8.model->kv_dtype(), DType::F8_E4M3);
  ASSERT_EQ(bf16.model->kv_dtype(), DType::BF16);
  auto tok = Tokenizer::load(bundled_model());
  std::ifstream in(bundled_model() + "/../data/validation-head.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = tok->encode(ss.str());
  ASSERT_GE(ids.size(), 384u);
  ids.resize(384);
  const int64_t V = bf16.model->config().vocab_size;
  for (int64_t chunk : {int64_t(0), int64_t(1)}) {  // one pass (prefill kernel), then token by token (decode)
    const std::vector<float> want = run(*bf16.model, ids, chunk), got = run(*fp8.model, ids, chunk);
    double max_kl = 0, mean_kl = 0;
    int same = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* x = want.data() + t * size_t(V);
      const float* y = got.data() + t * size_t(V);
      const double mx = *std::max_element(x, x + V), my = *std::max_element(y, y + V);
      double zx = 0, zy = 0;
      for (int64_t i = 0; i < V; ++i) zx += std::exp(x[i] - mx), zy += std::exp(y[i] - my);
      double kl = 0;
      for (int64_t i = 0; i < V; ++i) {
        const double lp = x[i] - mx - std::log(zx), lq = y[i] - my - std::log(zy);
        kl += std::exp(lp) * (lp - lq);
      }
      max_kl = std::max(max_kl, kl);
      mean_kl += kl / double(ids.size());
      same += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
    }
    std::printf("[ fp8 kv ] %s: mean KL %.2e, max KL %.2e, same argmax %d of %zu\n", chunk ? "decode" : "prefill",
                mean_kl, max_kl, same, ids.size());
    EXPECT_LT(mean_kl, 4e-3);
    EXPECT_LT(max_kl, 5e-2);
    EXPECT_GE(same, int(ids.size()) * 95 / 100);
  }
}

// Sampling on the GPU (Backend::sample_rows) against the host Sampler over the same GPU logits:
// a request that asks for logprobs is sampled on the host, the same request without them on
// the device. Greedy with penalties and top-k 1 give the same tokens on both; seeded sampling
// on the device repeats itself and follows the seed.
TEST(GpuEngine, DeviceSamplingMatchesTheHostSampler) {
  GALE_REQUIRE_GPU();
  LoadedModel lm = load_model(bundled_model(), cuda());
  ASSERT_TRUE(lm.model->backend().has_sample_rows());
  auto tok = Tokenizer::load(bundled_model());
  const std::vector<int32_t> prompt = tok->encode("def fibonacci(n):");
  auto run = [&](const SamplingParams& sp, int top_logprobs) {
    EngineConfig ec;
    ec.kv_cache_bytes = 64 << 20;
    Engine e(*lm.model, nullptr, ec);
    RequestParams p;
    p.prompt = prompt;
    p.max_tokens = 24;
    p.ignore_eos = true;
    p.sampling = sp;
    p.top_logprobs = top_logprobs;
    e.add_request(p);
    std::vector<int32_t> ids;
    while (e.has_unfinished())
      for (RequestOutput& o : e.step()) ids.insert(ids.end(), o.new_ids.begin(), o.new_ids.end());
    return ids;
  };
  SamplingParams pen;
  pen.repetition_penalty = 1.3f;
  pen.presence_penalty = 0.5f;
  pen.frequency_penalty = 0.3f;
  EXPECT_EQ(run(pen, -1), run(pen, 0)) << "greedy with penalties";
  SamplingParams k1 = pen;
  k1.temperature = 0.7f;
  k1.top_k = 1;
  k1.seed = 5;
  EXPECT_EQ(run(k1, -1), run(k1, 0)) << "top-k 1";
  SamplingParams hot;
  hot.temperature = 1.5f;
  hot.seed = 11;
  const auto a = run(hot, -1);
  EXPECT_EQ(a.size(), size_t(24));
  EXPECT_EQ(a, run(hot, -1)) << "same seed";
  bool differs = false;
  for (uint64_t seed = 12; seed < 16; ++seed) {
    hot.seed = seed;
    differs = differs || run(hot, -1) != a;
  }
  EXPECT_TRUE(differs) << "other seeds drew the same 24 tokens";
}

// Constrained decoding on the GPU: the grammar's mask goes with the row to the sampling kernel
// (RowSampling::allowed) and only ids come back. Greedy, the device path must give the host
// path's tokens (a request with logprobs takes the host path: logits to the host, masked by
// apply_token_mask, Sampler); sampled, every output must match its constraint; several
// constrained requests batched with a free one keep their outputs valid while steps overlap.
TEST(GpuEngine, DeviceMaskMatchesTheHostMask) {
  GALE_REQUIRE_GPU();
  LoadedModel lm = load_model(bundled_model(), cuda());
  ASSERT_TRUE(lm.model->backend().has_sample_rows());
  auto tok = Tokenizer::load(bundled_model());
  const std::string re = "(yes|no|[0-9]{2,4}(\\.[0-9])?) [a-z]{1,5}!";
  auto run = [&](std::vector<RequestParams> ps) {
    EngineConfig ec;
    ec.kv_cache_bytes = 64 << 20;
    Engine e(*lm.model, tok.get(), ec);
    std::map<uint64_t, size_t> index;
    for (size_t i = 0; i < ps.size(); ++i) index[e.add_request(ps[i])] = i;
    std::vector<std::pair<std::vector<int32_t>, std::string>> out(ps.size());
    while (e.has_unfinished())
      for (RequestOutput& o : e.step()) {
        EXPECT_TRUE(o.error.empty()) << o.error;
        auto& [ids, text] = out[index.at(o.id)];
        ids.insert(ids.end(), o.new_ids.begin(), o.new_ids.end());
        text += o.new_text;
      }
    return out;
  };
  auto req = [&](const char* prompt, ConstraintSpec c, float temperature, uint64_t seed, int top_logprobs) {
    RequestParams p;
    p.prompt = tok->encode(prompt);
    p.max_tokens = 200;
    p.eos_ids = {0};
    p.sampling.temperature = temperature;
    p.sampling.seed = seed;
    p.top_logprobs = top_logprobs;
    p.constraint = c;
    return p;
  };
  const ConstraintSpec regex{ConstraintSpec::Kind::Regex, re};
  const ConstraintSpec schema{ConstraintSpec::Kind::JsonSchema,
                              R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string","maxLength":8}},"required":["a","b"]})"};
  for (const ConstraintSpec& c : {regex, schema}) {
    const auto device = run({req("The answer is", c, 0.0f, 0, -1)});
    const auto host = run({req("The answer is", c, 0.0f, 0, 0)});
    EXPECT_EQ(device[0].first, host[0].first) << device[0].second << " vs " << host[0].second;
  }
  std::vector<RequestParams> mixed;
  for (uint64_t s = 0; s < 6; ++s) mixed.push_back(req(s % 2 ? "def f(x):" : "Answer:", s < 3 ? regex : schema, 1.2f, s, -1));
  RequestParams free = req("def fibonacci(n):", {}, 0.0f, 0, -1);
  free.max_tokens = 64;
  free.ignore_eos = true;
  mixed.push_back(free);
  const auto out = run(mixed);
  for (size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE(out[i].second);
    if (i < 3) {
      EXPECT_TRUE(std::regex_match(out[i].second, std::regex(re)));
    } else {
      auto j = nlohmann::json::parse(out[i].second);
      EXPECT_TRUE(j["a"].is_number_integer() && j["b"].is_string() && j.size() == 2);
    }
  }
  EXPECT_EQ(out[6].first.size(), size_t(64));
}

TEST(GpuModel, BadDeviceIsAClearError) {
  GALE_REQUIRE_GPU();
  BackendOptions o;
  o.device = "cuda:99";
  try {
    load_model(bundled_model(), o);
    FAIL() << "cuda:99 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:99"), std::string::npos) << e.what();
  }
}

}  // namespace
#endif  // GALE_FIXTURES_DIR
