// config.json parsing: real 4.x configs by hand, the 5.x fixtures and their 4.x twins.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "loader/model_config.h"
#include "model/arch/arch.h"
#include "test_util.h"

using namespace gale;
using nlohmann::json;

namespace {

ModelConfig parse_file(const std::string& name) {
  return parse_model_config(test::read_json(test::fixtures_dir() + "/configs/" + name), name);
}

TEST(Config, Llama31_8B) {
  ModelConfig c = parse_file("llama-3.1-8b.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{128001});
  for (auto w : c.layer_window) EXPECT_EQ(w, 0);
}

TEST(Config, Qwen25_7B_SlidingWindowDisabled) {
  ModelConfig c = parse_file("qwen2.5-7b.json");
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope.type, RopeType::Default);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  for (auto w : c.layer_window) EXPECT_EQ(w, 0) << "use_sliding_window is false";
}

TEST(Config, Qwen25_Yarn_OldTypeKey) {
  ModelConfig c = parse_file("qwen2.5-7b-instruct-yarn.json");
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position, 32768);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
}

TEST(Config, Mistral7B_SlidingWindow) {
  ModelConfig c = parse_file("mistral-7b-v0.1.json");
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  ASSERT_EQ(c.layer_window.size(), 32u);
  for (auto w : c.layer_window) EXPECT_EQ(w, 4096);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.bos_token_id, 1);
}

TEST(Config, Mixtral8x7B_Experts) {
  ModelConfig c = parse_file("mixtral-8x7b-v0.1.json");
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_TRUE(c.norm_topk_prob);
  for (auto w : c.layer_window) EXPECT_EQ(w, 0) << "sliding_window is null";
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
}

TEST(Config, Qwen3_8B_HeadDimAndQkNorm) {
  ModelConfig c = parse_file("qwen3-8b.json");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.num_layers, 36);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_EQ(c.rope.type, RopeType::Default);
}

// The fixtures' config.json (5.x, rope_parameters) and config.v4.json (the same model in the
// 4.x layout) must describe the same model.
TEST(Config, V5AndV4LayoutsAgreeOnEveryFixture) {
  for (const auto& name : test::model_fixture_names()) {
    std::string d = test::fixtures_dir() + "/models/" + name;
    ModelConfig a = parse_model_config(test::read_json(d + "/config.json"));
    ModelConfig b = parse_model_config(test::read_json(d + "/config.v4.json"));
    SCOPED_TRACE(name);
    EXPECT_EQ(a.rope.type, b.rope.type);
    EXPECT_DOUBLE_EQ(a.rope.theta, b.rope.theta);
    EXPECT_DOUBLE_EQ(a.rope.factor, b.rope.factor);
    EXPECT_EQ(a.rope.original_max_position, b.rope.original_max_position);
    EXPECT_EQ(a.layer_window, b.layer_window);
    EXPECT_EQ(a.head_dim, b.head_dim);
    EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  }
}

TEST(Config, FixtureFeatures) {
  auto load = [](const std::string& n) {
    return load_model_config(test::fixtures_dir() + "/models/" + n);
  };
  EXPECT_EQ(load("llama-f32").rope.type, RopeType::Llama3);
  EXPECT_TRUE(load("llama-f32").tie_word_embeddings);
  EXPECT_EQ(load("mistral-f32").layer_window[0], 48);
  EXPECT_EQ(load("mistral-f32").rope.type, RopeType::Linear);
  EXPECT_EQ(load("qwen2-f32").rope.type, RopeType::Yarn);
  EXPECT_EQ(load("qwen2-f32").num_kv_heads, 1);  // MQA
  EXPECT_EQ(load("qwen3-f32").head_dim, 32);
  EXPECT_EQ(load("mixtral-f32").num_experts, 4);
  EXPECT_EQ(load("llama_dynamic-f32").rope.type, RopeType::Dynamic);
}

TEST(Config, UnknownArchitectureIsNamedWithTheSupportedList) {
  json j = test::read_json(test::fixtures_dir() + "/configs/llama-3.1-8b.json");
  j["architectures"] = {"GPTNeoXForCausalLM"};
  try {
    parse_model_config(j);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("GPTNeoXForCausalLM"), std::string::npos) << m;
    EXPECT_NE(m.find("Qwen3ForCausalLM"), std::string::npos) << m;
  }
}

TEST(Config, BadValuesAreErrors) {
  json base = test::read_json(test::fixtures_dir() + "/configs/llama-3.1-8b.json");
  auto bad = [&](auto mutate) {
    json j = base;
    mutate(j);
    EXPECT_THROW(parse_model_config(j), Error) << j.dump();
  };
  bad([](json& j) { j.erase("hidden_size"); });
  bad([](json& j) { j["hidden_size"] = "4096"; });
  bad([](json& j) { j["num_attention_heads"] = 0; });
  bad([](json& j) { j["num_key_value_heads"] = 5; });
  bad([](json& j) { j["vocab_size"] = -1; });
  bad([](json& j) { j["rope_scaling"]["rope_type"] = "su"; });
  bad([](json& j) { j["rope_scaling"].erase("factor"); });
  bad([](json& j) { j["architectures"] = json::array(); });
  bad([](json& j) { j["hidden_act"] = "gelu"; });
  bad([](json& j) { j = json::array(); });
}

// Issue 15: sizes read from config.json are bounded before anything is allocated from them
// (num_hidden_layers: 1e9 used to take ~8 GB), and huge or non-integral doubles never reach an
// undefined double -> int64 conversion.
TEST(Config, AbsurdSizesAreClearErrors) {
  json base = test::read_json(test::fixtures_dir() + "/configs/llama-3.1-8b.json");
  auto error = [&](auto mutate) {
    json j = base;
    mutate(j);
    try {
      parse_model_config(j);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error for ") + j.dump();
  };
  auto expect = [&](auto mutate, const std::string& key, const std::string& why) {
    std::string e = error(mutate);
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << e;
    EXPECT_NE(e.find(why), std::string::npos) << e;
  };
  expect([](json& j) { j["num_hidden_layers"] = 1e9; }, "num_hidden_layers", "more than the 4096");
  expect([](json& j) { j["num_hidden_layers"] = 1e300; }, "num_hidden_layers", "out of range");
  expect([](json& j) { j["num_hidden_layers"] = 2.5; }, "num_hidden_layers", "must be an integer");
  expect([](json& j) { j["num_hidden_layers"] = uint64_t(18446744073709551615u); }, "num_hidden_layers", "out of range");
  expect([](json& j) { j["hidden_size"] = 1e30; }, "hidden_size", "out of range");
  expect([](json& j) { j["hidden_size"] = int64_t(1) << 40; }, "hidden_size", "more than");
  expect([](json& j) { j["num_attention_heads"] = 1e6; }, "num_attention_heads", "more than");
  expect([](json& j) { j["num_key_value_heads"] = 1e6; }, "num_key_value_heads", "more than");
  expect([](json& j) { j["head_dim"] = 1e6; }, "head_dim", "more than");
  expect([](json& j) { j["intermediate_size"] = 1e12; }, "intermediate_size", "more than");
  expect([](json& j) { j["max_position_embeddings"] = -5; }, "max_position_embeddings", "must be in");
  expect([](json& j) { j["partial_rotary_factor"] = 1e300; }, "partial_rotary_factor", "(0, 1]");
  expect([](json& j) { j["eos_token_id"] = int64_t(4294967297); }, "eos_token_id", "out of range");
  json mixtral = test::read_json(test::fixtures_dir() + "/configs/mixtral-8x7b-v0.1.json");
  mixtral["num_local_experts"] = 1e9;
  EXPECT_THROW(parse_model_config(mixtral), Error);
  json qwen = test::read_json(test::fixtures_dir() + "/configs/qwen2.5-7b.json");
  qwen["use_sliding_window"] = true;
  qwen["sliding_window"] = 4096;
  qwen["max_window_layers"] = -5;  // indexed the layer array at -5
  EXPECT_THROW(parse_model_config(qwen), Error);
}

// Issue 15: quantized checkpoints loaded as if unquantized (rc 0, wrong logits). A method Gale
// does not load is refused by name (issue 17 added the FP8 ones: fp8_checkpoint_test.cpp).
TEST(Config, QuantizationConfigIsRefusedByName) {
  json j = test::read_json(test::fixtures_dir() + "/configs/llama-3.1-8b.json");
  j["quantization_config"] = {{"quant_method", "hqq"}, {"bits", 4}};
  try {
    parse_model_config(j);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("quantization method 'hqq'"), std::string::npos) << m;
    EXPECT_NE(m.find("not supported (supported: 'fp8', 'awq', 'gptq', 'compressed-tensors' FP8 / INT4 / INT8"),
              std::string::npos) << m;
  }
  j["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}};
  EXPECT_EQ(parse_model_config(j).quant.format, QuantConfig::Format::Awq);
  j["quantization_config"] = {{"bits", 4}};
  EXPECT_THROW(parse_model_config(j), Error);
  j["quantization_config"] = nullptr;  // transformers writes null for "none"
  EXPECT_NO_THROW(parse_model_config(j));
  j["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}};
  EXPECT_EQ(parse_model_config(j).quant.format, QuantConfig::Format::Fp8);
}

TEST(GenerationConfig, EosListAndSamplingDefaults) {
  ModelConfig c = parse_file("llama-3.1-8b.json");
  json g = {{"bos_token_id", 128000}, {"eos_token_id", {128001, 128008, 128009}}, {"do_sample", true},
            {"temperature", 0.6}, {"top_p", 0.9}};
  GenerationDefaults d = parse_generation_config(g, c, "generation_config.json");
  EXPECT_EQ(d.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_TRUE(d.do_sample);
  EXPECT_FLOAT_EQ(d.temperature, 0.6f);
  EXPECT_FLOAT_EQ(d.top_p, 0.9f);
  GenerationDefaults single = parse_generation_config(json{{"eos_token_id", 2}}, c, "g");
  EXPECT_EQ(single.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_THROW(parse_generation_config(json{{"eos_token_id", "x"}}, c, "g"), Error);
}

}  // namespace
