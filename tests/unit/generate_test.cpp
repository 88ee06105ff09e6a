// End-to-end generation against transformers: greedy continuations of every fixture
// checkpoint and of the bundled models.
#include <gtest/gtest.h>


#include "engine/generator.h"
#include "model/model_loader.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

class FixtureGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureGreedy, GreedyContinuationIsIdentical) {
  const std::string dir = test::fixtures_dir() + "/models/" + GetParam();
  auto ref = test::read_json(dir + "/reference.json");
  LoadedModel lm = load_model(dir, ActDType::F32);
  Generator gen(*lm.model, nullptr);
  GenerateRequest req;
  req.prompt = ref["greedy_prompt_ids"].get<std::vector<int32_t>>();
  auto expect = ref["greedy_ids"].get<std::vector<int32_t>>();
  req.max_new_tokens = int64_t(expect.size());
  req.ignore_eos = true;  // transformers was run with min_new_tokens = max_new_tokens
  req.eos_ids = {1};
  GenerateResult r = gen.generate(req);
  EXPECT_EQ(r.ids, expect);
  EXPECT_EQ(r.finish_reason, "length");
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, FixtureGreedy, ::testing::ValuesIn(test::model_fixture_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (!isalnum(uint8_t(ch))) ch = '_';
                           return n;
                         });

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

class BundledModel : public ::testing::TestWithParam<std::string> {};

TEST_P(BundledModel, GreedyTextMatchesTransformers) {
  auto ref = test::read_json(test::fixtures_dir() + "/default_model/reference.json")["models"][GetParam()];
  LoadedModel lm = load_model(bundled(GetParam()), ActDType::F32);
  auto tok = Tokenizer::load(bundled(GetParam()));
  for (auto& g : ref["greedy"]) {
    SCOPED_TRACE(g["prompt"].get<std::string>());
    std::vector<int32_t> prompt = tok->encode(g["prompt"].get<std::string>());
    EXPECT_EQ(prompt, g["prompt_ids"].get<std::vector<int32_t>>());
    Generator gen(*lm.model, tok.get());
    GenerateRequest req;
    req.prompt = prompt;
    req.max_new_tokens = int64_t(g["ids"].size());
    req.eos_ids = {0};
    std::string streamed;
    GenerateResult r = gen.generate(req, [&](std::string_view s) { streamed += s; });
    EXPECT_EQ(r.ids, g["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(r.text, g["text"].get<std::string>());
    EXPECT_EQ(streamed, r.text);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BundledModel, ::testing::Values("default", "draft"));

TEST(Generator, StopStringEndsGenerationAndIsNotEmitted) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  auto ref = test::read_json(test::fixtures_dir() + "/default_model/reference.json")["models"]["default"]["greedy"][0];
  const std::string full = ref["text"].get<std::string>();  // greedy text after "def fibonacci(n):"
  const std::string stop = "wrapper";
  ASSERT_NE(full.find(stop), std::string::npos);
  Generator gen(*lm.model, tok.get());
  GenerateRequest req;
  req.prompt = tok->encode(ref["prompt"].get<std::string>());
  req.max_new_tokens = 48;
  req.stop = {stop, "never-appears-in-output"};
  std::string streamed;
  GenerateResult r = gen.generate(req, [&](std::string_view s) { streamed += s; });
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, full.substr(0, full.find(stop)));
  EXPECT_EQ(streamed, r.text);
}

TEST(Generator, SeededSamplingIsReproducible) {
  LoadedModel lm = load_model(bundled("draft"), ActDType::F32);
  Generator gen(*lm.model, nullptr);
  GenerateRequest req;
  req.prompt = {788, 967, 199};
  req.max_new_tokens = 20;
  req.sampling.temperature = 1.0f;
  req.sampling.top_p = 0.9f;
  req.sampling.seed = 11;
  auto a = gen.generate(req).ids;
  auto b = gen.generate(req).ids;
  req.sampling.seed = 12;
  auto c = gen.generate(req).ids;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

}  // namespace
