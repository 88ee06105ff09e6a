// safetensors loading and the checks that keep bad checkpoints from crashing anything.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "loader/safetensors.h"
#include "model/model_loader.h"
#include "test_util.h"

using namespace gale;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string blob(const json& header, size_t data_bytes, uint64_t claimed_len = 0) {
  std::string h = header.dump();
  uint64_t len = claimed_len ? claimed_len : h.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(len >> (8 * i));
  out += h;
  out.append(data_bytes, '\x01');
  return out;
}

std::string error_of(const std::string& b) {
  try {
    parse_safetensors(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "x.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SafeTensors, ParsesValidHeader) {
  json h = {{"__metadata__", {{"format", "pt"}}},
            {"a", {{"dtype", "BF16"}, {"shape", {2, 3}}, {"data_offsets", {0, 12}}}},
            {"b", {{"dtype", "F8_E4M3"}, {"shape", {4}}, {"data_offsets", {12, 16}}}}};
  std::string b = blob(h, 16);
  auto t = parse_safetensors(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "x");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "a");
  EXPECT_EQ(t[0].dtype, DType::BF16);
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t[1].dtype, DType::F8_E4M3);
  EXPECT_EQ(t[1].nbytes, 4u);
}

TEST(SafeTensors, RejectsCorruptInput) {
  json ok = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}};
  EXPECT_NE(error_of("abc"), "");
  EXPECT_NE(error_of(blob(ok, 8, 1000000)).find("exceeds file size"), std::string::npos);
  EXPECT_NE(error_of(blob(ok, 4)).find("past the end"), std::string::npos);
  json shape_mismatch = {{"a", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}};
  EXPECT_NE(error_of(blob(shape_mismatch, 8)).find("does not match"), std::string::npos);
  json bad_dtype = {{"a", {{"dtype", "Q4_K"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}};
  EXPECT_NE(error_of(blob(bad_dtype, 8)).find("unsupported dtype"), std::string::npos);
  json neg = {{"a", {{"dtype", "F32"}, {"shape", {-2}}, {"data_offsets", {0, 8}}}}};
  EXPECT_NE(error_of(blob(neg, 8)), "");
  json reversed = {{"a", {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {8, 0}}}}};
  EXPECT_NE(error_of(blob(reversed, 8)), "");
  json huge = {{"a", {{"dtype", "F32"}, {"shape", {1ll << 40, 1ll << 40}}, {"data_offsets", {0, 8}}}}};
  EXPECT_NE(error_of(blob(huge, 8)), "");
  std::string not_json = blob(ok, 8);
  not_json[9] = '#';
  EXPECT_NE(error_of(not_json).find("invalid JSON"), std::string::npos);
}

// Issue 15: nesting is bounded in every JSON Gale reads (the walk after parsing recurses).
TEST(SafeTensors, DeeplyNestedHeaderIsRefused) {
  json h = {{"a", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  std::string text = h.dump();
  text.insert(1, "\"__metadata__\": " + std::string(100000, '[') + std::string(100000, ']') + ", ");
  std::string b(8, '\0');
  for (int i = 0; i < 8; ++i) b[size_t(i)] = char(uint64_t(text.size()) >> (8 * i));
  b += text;
  b.append(4, '\0');
  EXPECT_NE(error_of(b).find("nests deeper than 128 levels"), std::string::npos) << error_of(b);
}

TEST(F8, DecodesBothFormats) {
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);   // 0 0111 000
  EXPECT_EQ(f8e4m3_to_f32(0xB8), -1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x7E), 448.0f);  // max normal
  EXPECT_EQ(f8e4m3_to_f32(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7F)));
  EXPECT_EQ(f8e5m2_to_f32(0x3C), 1.0f);
  EXPECT_EQ(f8e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(f8e5m2_to_f32(0x7C)));
}

TEST(F16, RoundTripsAndRounds) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f) << f;
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 1.0f / 4096)), 1.0f);  // ties to even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.00390625f)), 1.0f);       // ties to even
}

// A temporary copy of a fixture model to corrupt.
class BrokenModel : public ::testing::Test {
 protected:
  fs::path dir;
  void SetUp() override {
    dir = fs::temp_directory_path() / ("gale-broken-" + std::to_string(::getpid()) + "-" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::copy(test::fixtures_dir() + "/models/llama-f32", dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string load_error() {
    try {
      load_model(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  void edit_config(const std::function<void(json&)>& f) {
    json j = test::read_json((dir / "config.json").string());
    f(j);
    std::ofstream(dir / "config.json") << j.dump();
  }
  // Appends an F32 tensor of n elements to model.safetensors.
  void add_tensor(const std::string& name, int64_t n) {
    std::ifstream in(dir / "model.safetensors", std::ios::binary);
    std::string file((std::istreambuf_iterator<char>(in)), {});
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(file[size_t(i)]);
    json header = json::parse(file.substr(8, hlen));
    std::string data = file.substr(8 + hlen);
    header[name] = {{"dtype", "F32"}, {"shape", {n}}, {"data_offsets", {data.size(), data.size() + 4 * size_t(n)}}};
    data.append(4 * size_t(n), '\0');
    std::ofstream(dir / "model.safetensors", std::ios::binary) << blob(header, 0) << data;
  }
};

TEST_F(BrokenModel, MissingFiles) {
  fs::remove(dir / "model.safetensors");
  EXPECT_NE(load_error().find("no model.safetensors"), std::string::npos);
  fs::remove(dir / "config.json");
  EXPECT_NE(load_error().find("no config.json"), std::string::npos);
  EXPECT_NE([&] { try { load_model("/nonexistent/model"); } catch (const Error& e) { return std::string(e.what()); } return std::string(); }()
                .find("not found"), std::string::npos);
}

TEST_F(BrokenModel, TruncatedCheckpoint) {
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") / 2);
  EXPECT_NE(load_error().find("past the end"), std::string::npos) << load_error();
  fs::resize_file(dir / "model.safetensors", 5);
  EXPECT_NE(load_error().find("not a safetensors file"), std::string::npos) << load_error();
}

TEST_F(BrokenModel, ShapeDisagreesWithConfig) {
  edit_config([](json& j) { j["intermediate_size"] = 256; });
  std::string e = load_error();
  EXPECT_NE(e.find("mlp"), std::string::npos) << e;
  EXPECT_NE(e.find("config.json implies"), std::string::npos) << e;
}

TEST_F(BrokenModel, MissingTensorIsNamed) {
  edit_config([](json& j) { j["num_hidden_layers"] = 3; });
  EXPECT_NE(load_error().find("model.layers.2."), std::string::npos) << load_error();
}

// Issue 15: the counts config.json gives are checked against the checkpoint's tensor names
// before the layer arrays are sized from them (num_hidden_layers: 1e9 used to take ~8 GB first).
TEST_F(BrokenModel, LayerCountIsCheckedAgainstTheCheckpointFirst) {
  edit_config([](json& j) { j["num_hidden_layers"] = 4000; });
  std::string e = load_error();
  EXPECT_NE(e.find("num_hidden_layers = 4000 but the checkpoint holds 2 layers"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.2."), std::string::npos) << e;
  // A stray tensor with a huge layer index is not a layer count.
  edit_config([](json& j) { j["num_hidden_layers"] = 2; });
  add_tensor("model.layers.999999999.extra", 1);
  EXPECT_EQ(load_error(), "");
}

TEST(ModelCheck, ExpertCountIsCheckedAgainstTheCheckpointFirst) {
  fs::path d = fs::temp_directory_path() / ("gale-experts-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::copy(test::fixtures_dir() + "/models/mixtral-f32", d);
  json j = test::read_json((d / "config.json").string());
  const int64_t have = j["num_local_experts"];
  j["num_local_experts"] = 16000;
  j["num_experts_per_tok"] = 2;
  std::ofstream(d / "config.json") << j.dump();
  try {
    load_model(d.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("num_local_experts = 16000 but layer 0 of the checkpoint holds " + std::to_string(have) + " experts"),
              std::string::npos) << m;
  }
  fs::remove_all(d);
}

// Issue 15: a quantized checkpoint (quantization_config, *weight_scale* tensors) loaded as if it
// were not (rc 0, wrong logits). The config is refused by name, and a scale tensor the model
// does not bind is never dropped silently.
TEST_F(BrokenModel, QuantizedCheckpointsAreRefused) {
  edit_config([](json& j) { j["quantization_config"] = {{"quant_method", "bitsandbytes"}}; });
  EXPECT_NE(load_error().find("quantization method 'bitsandbytes', which is not supported"), std::string::npos)
      << load_error();
  edit_config([](json& j) { j["quantization_config"] = {{"quant_method", "compressed-tensors"}}; });
  EXPECT_NE(load_error().find("'config_groups' must hold exactly one group"), std::string::npos) << load_error();
  edit_config([](json& j) { j.erase("quantization_config"); });
  // A rotary inv_freq buffer (older checkpoints carry one) is ignored, as transformers does.
  add_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", 8);
  EXPECT_EQ(load_error(), "");
  for (const char* scale : {"model.layers.0.self_attn.q_proj.weight_scale", "model.layers.1.mlp.down_proj.weight_scale_inv",
                            "model.layers.0.self_attn.k_scale", "model.layers.1.mlp.up_proj.qzeros",
                            "model.layers.0.self_attn.o_proj.input_scale", "model.layers.0.mlp.gate_proj.scales",
                            "model.layers.0.mlp.gate_proj.g_idx"}) {
    SetUp();  // a fresh copy
    add_tensor(scale, 1);
    std::string e = load_error();
    EXPECT_NE(e.find(std::string("tensor '") + scale + "'"), std::string::npos) << e;
    EXPECT_NE(e.find("quantization"), std::string::npos) << e;
  }
}

TEST_F(BrokenModel, UnknownArchitecture) {
  edit_config([](json& j) { j["architectures"] = {"FalconForCausalLM"}; });
  EXPECT_NE(load_error().find("FalconForCausalLM"), std::string::npos);
}

TEST_F(BrokenModel, ShardedIndexIsFollowedAndChecked) {
  // Split the single file into an index that points every tensor at it.
  auto st = SafeTensors::open_dir(dir.string());
  json idx = {{"metadata", json::object()}, {"weight_map", json::object()}};
  for (auto& [name, t] : st.tensors()) idx["weight_map"][name] = "model.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << idx.dump();
  EXPECT_EQ(load_error(), "");
  idx["weight_map"]["model.norm.weight"] = "../escape.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << idx.dump();
  EXPECT_NE(load_error().find("plain file name"), std::string::npos);
  idx["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << idx.dump();
  EXPECT_NE(load_error().find("model-00002-of-00002.safetensors"), std::string::npos);
}

TEST(Model, OutOfRangeTokenIdIsAnError) {
  LoadedModel lm = load_model(test::fixtures_dir() + "/models/llama-f32");
  KVCache kv(lm.model->config(), 1, 16, DType::F32);
  std::vector<int32_t> table = {0};
  std::vector<float> logits;
  for (int32_t bad : {-1, 384, 1 << 30}) {
    std::vector<int32_t> ids = {1, bad};
    SeqStep s{ids, 0, table, SeqStep::Logits::Last};
    EXPECT_THROW(lm.model->forward({&s, 1}, kv, logits), Error);
  }
}

TEST(Synthetic, TinyShapeRunsAndUnknownNameIsListed) {
  LoadedModel lm = load_model("synthetic:tiny");
  EXPECT_TRUE(lm.synthetic);
  KVCache kv(lm.model->config(), 1, 16, DType::F32);
  std::vector<int32_t> table = {0}, ids = {1, 2, 3};
  std::vector<float> logits;
  SeqStep s{ids, 0, table, SeqStep::Logits::Last};
  lm.model->forward({&s, 1}, kv, logits);
  ASSERT_EQ(logits.size(), size_t(lm.model->config().vocab_size));
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  try {
    load_model("synthetic:gpt5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama3-8b"), std::string::npos);
  }
}

}  // namespace
