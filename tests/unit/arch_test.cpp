// Architecture descriptions (src/model/arch/): every fixture checkpoint holds exactly the
// tensors its description names (the layout synthetic models use), and a fused-projection
// architecture (Phi3: qkv_proj, gate_up_proj) binds its projections as views that compute the
// same logits as the separate tensors they were fused from.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>

#include "loader/checkpoint_check.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/int_checkpoint.h"
#include "model/kv_cache.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;
using nlohmann::json;

namespace {

class FixtureLayout : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureLayout, CheckpointHoldsExactlyTheDescribedTensors) {
  const std::string dir = test::fixtures_dir() + "/models/" + GetParam();
  const ModelConfig c = load_model_config(dir);
  const SafeTensors st = SafeTensors::open_dir(dir);
  std::set<std::string> have, described;
  // Scales of a quantized checkpoint ride beside their weights (bound by TensorBinder::linear).
  for (const auto& [name, t] : st.tensors())
    if (!c.quant.quantized() || !is_quantization_tensor_name(name)) have.insert(name);
  for (const auto& [name, shape] : checkpoint_layout(c)) {
    // An integer format stores a projection's values under its own name (qweight, weight_packed:
    // model/int_checkpoint.h), a quantization tensor like its scales.
    if (c.quant.integer() && !st.find(name) && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
      const std::string stored = int_tensor_names(c.quant, name.substr(0, name.size() - 7)).weight;
      EXPECT_NE(st.find(stored), nullptr) << stored;
      continue;
    }
    described.insert(name);
    ASSERT_NE(st.find(name), nullptr) << name;
    EXPECT_EQ(st.find(name)->shape, shape) << name;
  }
  // A tied LM head may still be stored (transformers writes it for some models).
  if (c.tie_word_embeddings) have.erase("lm_head.weight");
  EXPECT_EQ(have, described);
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, FixtureLayout, ::testing::ValuesIn(test::model_fixture_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (!isalnum(uint8_t(ch))) ch = '_';
                           return n;
                         });

TEST(Phi3Architecture, FusedProjectionsBindAsViewsOfTheSameWeights) {
  const std::string dir = test::fixtures_dir() + "/models/llama-f32";
  json cj = test::read_json(dir + "/config.json");
  const ModelConfig llama_cfg = parse_model_config(cj);
  ASSERT_FALSE(llama_cfg.qkv_bias || llama_cfg.mlp_bias);  // Phi3 has no biases
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(dir));

  // The same weights as Phi3 stores them: q|k|v and gate|up fused row after row.
  test::Blob blob;
  auto bytes_of = [&](const std::string& name) {
    const TensorInfo& t = st->get(name);
    return std::vector<uint8_t>(t.data, t.data + t.nbytes);
  };
  for (const auto& [name, t] : st->tensors()) {
    if (name.find(".q_proj.") != std::string::npos || name.find(".gate_proj.") != std::string::npos) {
      const bool attn = name.find(".q_proj.") != std::string::npos;
      const std::string base = name.substr(0, name.find(attn ? "q_proj" : "gate_proj"));
      const std::vector<std::string> parts = attn ? std::vector<std::string>{"q_proj", "k_proj", "v_proj"}
                                                  : std::vector<std::string>{"gate_proj", "up_proj"};
      test::Blob::Entry e{base + (attn ? "qkv_proj.weight" : "gate_up_proj.weight"), t.dtype, {0, t.shape[1]}, {}};
      for (const std::string& part : parts) {
        const TensorInfo& pt = st->get(base + part + ".weight");
        e.shape[0] += pt.shape[0];
        auto b = bytes_of(pt.name);
        e.bytes.insert(e.bytes.end(), b.begin(), b.end());
      }
      blob.entries.push_back(std::move(e));
    } else if (name.find(".k_proj.") == std::string::npos && name.find(".v_proj.") == std::string::npos &&
               name.find(".up_proj.") == std::string::npos) {
      blob.entries.push_back({name, t.dtype, t.shape, bytes_of(name)});
    }
  }
  auto buf = blob.build();
  auto fused = std::make_shared<SafeTensors>(SafeTensors::from_memory(buf, buf->data(), buf->size(), "phi3 blob"));
  cj["architectures"] = {"Phi3ForCausalLM"};
  cj["model_type"] = "phi3";
  const ModelConfig phi3_cfg = parse_model_config(cj);

  Transformer llama(llama_cfg, bind_weights(st, llama_cfg));
  Transformer phi3(phi3_cfg, bind_weights(fused, phi3_cfg));
  // The views point into the fused tensor: q, k and v one after the other, gate then up.
  const LayerWeights& L = phi3.weights().layers[0];
  const size_t row = size_t(L.q.in) * dtype_size(L.q.dtype);
  EXPECT_EQ(static_cast<const uint8_t*>(L.k.w), static_cast<const uint8_t*>(L.q.w) + size_t(L.q.out) * row);
  EXPECT_EQ(static_cast<const uint8_t*>(L.v.w), static_cast<const uint8_t*>(L.k.w) + size_t(L.k.out) * row);
  EXPECT_EQ(static_cast<const uint8_t*>(L.up.w), static_cast<const uint8_t*>(L.gate.w) + size_t(L.gate.out) * row);

  const auto ids = test::read_json(dir + "/reference.json")["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<float> a = test::all_logits(llama, ids), b = test::all_logits(phi3, ids);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "logits differ";
}

TEST(Architectures, UnknownOneIsNamedWithTheSupportedList) {
  json cj = test::read_json(test::fixtures_dir() + "/models/llama-f32/config.json");
  cj["architectures"] = {"GPTNeoXForCausalLM"};
  try {
    parse_model_config(cj);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported architecture 'GPTNeoXForCausalLM'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("Phi3ForCausalLM"), std::string::npos);
  }
}

}  // namespace
