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
#include <nlohmann/json.hpp>

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
  KVCache kv(m.config(), (n + bs - 1) / bs, bs, m.kv_dtype(), &m.backend());
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
  // Every position's logits within bf16 tolerance of the f32 forward.
  double worst = 0;
  for (int64_t p = 0; p < n; ++p) worst = std::max(worst, rel_max_diff(lg.data() + p * V, lc.data() + p * V, V));
  RecordProperty("max_rel_diff", std::to_string(worst));
  EXPECT_LE(worst, 5e-2) << "worst position's max|gpu - cpu| / max|cpu|";
  // Argmax where transformers' winner leads clearly (bf16 may flip near-ties, MoE routing too).
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
  // Chunked prefill (chunks of 37 tokens over a cached prefix, the prefill kernel's varlen path)
  // gives the one-pass logits.
  std::vector<float> chunked = run(*gpu.model, ids, 37);
  double worst_chunk = 0;
  for (int64_t p = 0; p < n; ++p)
    worst_chunk = std::max(worst_chunk, rel_max_diff(chunked.data() + p * V, lg.data() + p * V, V));
  EXPECT_LE(worst_chunk, 2e-2);
  // Token-by-token decode (the split-K decode kernel) too.
  std::vector<float> decoded = run(*gpu.model, ids, 1);
  double worst_dec = 0;
  for (int64_t p = 0; p < n; ++p)
    worst_dec = std::max(worst_dec, rel_max_diff(decoded.data() + p * V, lg.data() + p * V, V));
  EXPECT_LE(worst_dec, 2e-2);
  std::printf("[ %s ] gpu vs cpu-f32 %.2e, chunked %.2e, decode %.2e, argmax %d/%d\n", GetParam().c_str(), worst,
              worst_chunk, worst_dec, agree, clear);
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
// preemption under a tiny KV budget give each request what it gives alone.
TEST(GpuEngine, BatchingPrefixCacheAndPreemptionKeepOutputs) {
  GALE_REQUIRE_GPU();
  LoadedModel lm = load_model(bundled_model(), cuda());
  auto tok = Tokenizer::load(bundled_model());
  const std::vector<std::string> texts = {
      "def fibonacci(n):", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n        self.items = []\n",
      "# Sort a list of numbers\ndef sort_numbers(xs):\n    return", "import os\nimport sys\n\ndef main():\n",
      "for i in range(10):\n    print(i)\n"};
  std::vector<RequestParams> reqs;
  std::vector<std::vector<int32_t>> expect;
  int64_t longest = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    RequestParams p;
    p.prompt = tok->encode(texts[i]);
    p.max_tokens = 12 + int64_t(i % 3) * 6;
    p.ignore_eos = true;
    reqs.push_back(p);
    longest = std::max<int64_t>(longest, int64_t(p.prompt.size()) + p.max_tokens);
    Generator gen(*lm.model, nullptr);
    GenerateRequest g;
    g.prompt = p.prompt;
    g.max_new_tokens = p.max_tokens;
    g.ignore_eos = true;
    expect.push_back(gen.generate(g).ids);
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
      if (budget == tiny) EXPECT_GT(st.preemptions, 0);
      if (prefix) EXPECT_GT(st.prefix_cache_hit_tokens, 0);
      for (size_t i = 0; i < reqs.size(); ++i)
        EXPECT_EQ(got[i], expect[i]) << "request " << i << " prefix " << prefix << " tiny " << (budget == tiny);
    }
  }
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
