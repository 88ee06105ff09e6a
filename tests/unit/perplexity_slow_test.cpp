// `gale perplexity` equals transformers within 0.5 % on the bundled models (issue: bundled model),
// and the target model measurably beats its draft.
// A whole-model workload: labelled slow, run in the release pass only.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/perplexity.h"
#include "model/model_loader.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

class BundledModel : public ::testing::TestWithParam<std::string> {};

TEST_P(BundledModel, PerplexityMatchesTransformers) {
  auto ref = test::read_json(test::fixtures_dir() + "/default_model/reference.json")["models"][GetParam()];
  LoadedModel lm = load_model(bundled(GetParam()), ActDType::F32);
  auto tok = Tokenizer::load(bundled(GetParam()));
  std::ifstream in(bundled("data/validation-head.txt"), std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = tok->encode(ss.str());
  for (auto [ctx, stride, key] : {std::tuple{128, 64, "validation_head_ppl_ctx128_stride64"},
                                  std::tuple{512, 256, "validation_head_ppl_ctx512_stride256"}}) {
    double expect = ref[key].get<double>();
    PerplexityResult r = perplexity(*lm.model, ids, ctx, stride);
    EXPECT_NEAR(r.ppl / expect, 1.0, 0.005) << key << ": gale " << r.ppl << " transformers " << expect;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BundledModel, ::testing::Values("default", "draft"));

// The speculative-decoding pair only pays off when the target is clearly the better model:
// both perplexities measured here, on the same held-out text, with the same windows.
TEST(BundledModels, TargetBeatsDraftOnValidation) {
  auto ppl = [](const std::string& name) {
    LoadedModel lm = load_model(bundled(name), ActDType::F32);
    auto tok = Tokenizer::load(bundled(name));
    std::ifstream in(bundled("data/validation-head.txt"), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return perplexity(*lm.model, tok->encode(ss.str()), 512, 256).ppl;
  };
  const double target = ppl("default"), draft = ppl("draft");
  EXPECT_LT(target, 0.8 * draft) << "default " << target << " draft " << draft;
}

}  // namespace
