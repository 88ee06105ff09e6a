// FP8 checkpoints as the hub publishes them (loader/quant_config.h): compressed-tensors
// float-quantized with per-tensor, per-channel or per-block weight scales, and transformers'
// fp8 with weight_block_size, made here from the f32 fixtures by a small quantizer that
// follows the formats' rules (scale = max |w| / 448 over the tensor, row or block; the stored
// value the E4M3 rounding of w / scale). Each must give the logits of the same model with the
// dequantized weights (E4M3 value times scale, in f32) stored as plain F32 tensors, and every
// malformed variant one clear error. transformers' own forward of such checkpoints is the
// fixture test's job (tests/fixtures/models/*-fp8*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/dtype.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;
using nlohmann::json;

namespace {

enum class Layout { CtTensor, CtChannel, CtBlock32, Fp8Block32, Fp8Tensor };

struct Made {
  json config;
  std::shared_ptr<std::vector<uint8_t>> fp8, dequantized;  // safetensors blobs
};

bool is_linear_weight(const std::string& name, const TensorInfo& t) {
  if (t.shape.size() != 2 || name.find("embed_tokens") != std::string::npos) return false;
  if (name.rfind("lm_head", 0) == 0) return false;              // ignored, as published checkpoints do
  if (name.find("block_sparse_moe.gate.") != std::string::npos) return false;  // the router stays 16-bit
  return name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Made make_fp8(const std::string& fixture, Layout layout) {
  const std::string dir = test::fixtures_dir() + "/models/" + fixture;
  Made m;
  m.config = test::read_json(dir + "/config.json");
  const SafeTensors st = SafeTensors::open_dir(dir);
  test::Blob q, d;
  const int64_t block = (layout == Layout::CtBlock32 || layout == Layout::Fp8Block32) ? 32 : 0;
  const bool fp8_method = layout == Layout::Fp8Block32 || layout == Layout::Fp8Tensor;
  for (const auto& [name, t] : st.tensors()) {
    std::vector<float> w(size_t(t.nbytes / dtype_size(t.dtype)));
    for (size_t i = 0; i < w.size(); ++i) w[i] = load_as_f32(t.data, t.dtype, i);
    if (!is_linear_weight(name, t)) {
      q.entries.push_back({name, DType::F32, t.shape, f32_bytes(w)});
      d.entries.push_back({name, DType::F32, t.shape, f32_bytes(w)});
      continue;
    }
    const int64_t out = t.shape[0], in = t.shape[1];
    // Which scale covers element (r, c), and the scale tensor's shape.
    int64_t srows = out, scols = in;
    std::vector<int64_t> sshape = {};
    if (layout == Layout::CtChannel) srows = 1, sshape = {out, 1};
    if (block) srows = scols = block, sshape = {(out + block - 1) / block, (in + block - 1) / block};
    if (layout == Layout::CtTensor) sshape = {1};
    const int64_t sld = (in + scols - 1) / scols;
    std::vector<float> s(size_t((out + srows - 1) / srows * sld), 0.0f);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        float& v = s[size_t(r / srows * sld + c / scols)];
        v = std::max(v, std::fabs(w[size_t(r * in + c)]));
      }
    for (float& v : s) v = v > 0 ? v / 448.0f : 1.0f;
    std::vector<uint8_t> codes(w.size());
    std::vector<float> deq(w.size());
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const size_t i = size_t(r * in + c);
        const float sc = s[size_t(r / srows * sld + c / scols)];
        codes[i] = f32_to_f8e4m3(w[i] / sc);
        deq[i] = f8e4m3_to_f32(codes[i]) * sc;
      }
    const std::string module = name.substr(0, name.size() - 7);
    q.entries.push_back({name, DType::F8_E4M3, t.shape, codes});
    q.entries.push_back({module + (fp8_method ? ".weight_scale_inv" : ".weight_scale"), DType::F32, sshape, f32_bytes(s)});
    d.entries.push_back({name, DType::F32, t.shape, f32_bytes(deq)});
  }
  m.fp8 = q.build();
  m.dequantized = d.build();
  if (fp8_method) {
    m.config["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"},
                                       {"modules_to_not_convert", {"lm_head"}}};
    if (block) m.config["quantization_config"]["weight_block_size"] = {block, block};
  } else {
    json weights = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"dynamic", false},
                    {"strategy", layout == Layout::CtTensor ? "tensor" : layout == Layout::CtChannel ? "channel" : "block"}};
    if (block) weights["block_structure"] = {block, block};
    m.config["quantization_config"] = {
        {"quant_method", "compressed-tensors"}, {"format", "float-quantized"}, {"quantization_status", "compressed"},
        {"ignore", {"lm_head"}},
        {"config_groups",
         {{"group_0", {{"targets", {"Linear"}}, {"weights", weights},
                       {"input_activations", {{"num_bits", 8}, {"type", "float"}, {"strategy", "token"}, {"dynamic", true}}}}}}}};
  }
  return m;
}

std::shared_ptr<SafeTensors> open_blob(const std::shared_ptr<std::vector<uint8_t>>& b) {
  return std::make_shared<SafeTensors>(SafeTensors::from_memory(b, b->data(), b->size(), "test blob"));
}

struct Param {
  std::string fixture;
  Layout layout;
};

class Fp8Checkpoint : public ::testing::TestWithParam<Param> {};

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  static const char* const names[] = {"ct_tensor", "ct_channel", "ct_block32", "fp8_block32", "fp8_tensor"};
  std::string n = info.param.fixture + "_" + names[int(info.param.layout)];
  for (auto& ch : n)
    if (!isalnum(uint8_t(ch))) ch = '_';
  return n;
}

TEST_P(Fp8Checkpoint, LogitsAreTheDequantizedModels) {
  const Param& p = GetParam();
  const Made m = make_fp8(p.fixture, p.layout);
  const ModelConfig qcfg = parse_model_config(m.config);
  ASSERT_TRUE(qcfg.quant.quantized());
  json plain = m.config;
  plain.erase("quantization_config");
  const ModelConfig pcfg = parse_model_config(plain);
  Transformer fp8(qcfg, bind_weights(open_blob(m.fp8), qcfg));
  Transformer ref(pcfg, bind_weights(open_blob(m.dequantized), pcfg));
  // Every quantized projection carries its scales; the LM head stays plain.
  const LayerWeights& L = fp8.weights().layers[0];
  EXPECT_EQ(L.o.dtype, DType::F8_E4M3);
  EXPECT_NE(L.o.scheme.scales, WeightScheme::Scales::None);
  EXPECT_EQ(fp8.weights().lm_head.scheme.scales, WeightScheme::Scales::None);

  const auto ids = test::read_json(test::fixtures_dir() + "/models/" + p.fixture + "/reference.json")["prompt_ids"]
                       .get<std::vector<int32_t>>();
  const std::vector<float> a = test::all_logits(fp8, ids), b = test::all_logits(ref, ids);
  ASSERT_EQ(a.size(), b.size());
  // The kernels widen each E4M3 value and multiply by its scale in f32, exactly the
  // dequantized weight; the sums may group differently from the F32 path's.
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  EXPECT_LT(worst, 1e-4) << "worst |logit difference|";
}

INSTANTIATE_TEST_SUITE_P(Layouts, Fp8Checkpoint,
                         ::testing::Values(Param{"llama-f32", Layout::CtTensor}, Param{"llama-f32", Layout::CtChannel},
                                           Param{"llama-f32", Layout::CtBlock32}, Param{"llama-f32", Layout::Fp8Block32},
                                           Param{"llama-f32", Layout::Fp8Tensor}, Param{"qwen2-f32", Layout::CtChannel},
                                           Param{"mixtral-f32", Layout::Fp8Block32}),
                         param_name);

std::string bind_error(const json& config, const std::shared_ptr<std::vector<uint8_t>>& blob) {
  try {
    const ModelConfig c = parse_model_config(config);
    bind_weights(open_blob(blob), c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Rebuilds m's FP8 blob with `edit` applied to its entries.
std::shared_ptr<std::vector<uint8_t>> edited(const Made& m, const std::function<void(std::vector<test::Blob::Entry>&)>& edit) {
  const SafeTensors st = SafeTensors::from_memory(m.fp8, m.fp8->data(), m.fp8->size(), "blob");
  test::Blob b;
  for (const auto& [name, t] : st.tensors())
    b.entries.push_back({name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
  edit(b.entries);
  return b.build();
}

TEST(Fp8CheckpointErrors, MissingWrongOrStrayScalesAreNamed) {
  const Made m = make_fp8("llama-f32", Layout::CtChannel);
  ASSERT_EQ(bind_error(m.config, m.fp8), "");
  const std::string q = "model.layers.0.self_attn.q_proj";
  auto drop = edited(m, [&](auto& es) {
    std::erase_if(es, [&](const test::Blob::Entry& e) { return e.name == q + ".weight_scale"; });
  });
  EXPECT_NE(bind_error(m.config, drop).find("no '" + q + ".weight_scale'"), std::string::npos) << bind_error(m.config, drop);
  auto wrong_shape = edited(m, [&](auto& es) {
    for (auto& e : es)
      if (e.name == q + ".weight_scale") e.shape = {e.shape[0] / 2, 2};
  });
  EXPECT_NE(bind_error(m.config, wrong_shape).find("'" + q + ".weight_scale' has shape"), std::string::npos)
      << bind_error(m.config, wrong_shape);
  // A scale beside a 16-bit weight: the config and the tensors disagree.
  auto stray = edited(m, [&](auto& es) {
    es.push_back({"lm_head.weight_scale", DType::F32, {384, 1}, std::vector<uint8_t>(384 * 4, 0)});
  });
  const std::string e = bind_error(m.config, stray);
  EXPECT_TRUE(e.find("lm_head.weight_scale") != std::string::npos) << e;
  // The same FP8 tensors read without their quantization_config would run unscaled.
  json no_config = m.config;
  no_config.erase("quantization_config");
  EXPECT_NE(bind_error(no_config, m.fp8).find("quantization"), std::string::npos) << bind_error(no_config, m.fp8);
}

TEST(Fp8CheckpointErrors, UnsupportedConfigsAreRefusedByName) {
  json j = test::read_json(test::fixtures_dir() + "/models/llama-f32/config.json");
  auto error = [&](const json& q) {
    json c = j;
    c["quantization_config"] = q;
    try {
      parse_model_config(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error({{"quant_method", "bitsandbytes"}, {"bits", 4}}).find("quantization method 'bitsandbytes', which is not supported"),
            std::string::npos);
  EXPECT_NE(error({{"quant_method", "fp8"}, {"weight_block_size", {128, 64}}}).find("only square blocks"),
            std::string::npos);
  EXPECT_NE(error({{"quant_method", "fp8"}, {"weight_block_size", {100, 100}}}).find("multiple of 16"),
            std::string::npos);
  json nvfp4 = {{"quant_method", "compressed-tensors"}, {"format", "nvfp4-pack-quantized"}};
  nvfp4["config_groups"]["group_0"] = {{"targets", {"Linear"}},
                                       {"weights", {{"num_bits", 4}, {"type", "float"}, {"strategy", "tensor_group"}}}};
  EXPECT_NE(error(nvfp4).find("'nvfp4-pack-quantized'"), std::string::npos) << error(nvfp4);
  json int8 = {{"quant_method", "compressed-tensors"}, {"format", "float-quantized"}};
  int8["config_groups"]["group_0"] = {{"targets", {"Linear"}},
                                      {"weights", {{"num_bits", 8}, {"type", "int"}, {"strategy", "channel"}}}};
  EXPECT_NE(error(int8).find("integer weights are loaded from 'pack-quantized' and 'int-quantized'"), std::string::npos)
      << error(int8);
  EXPECT_EQ(error(nullptr), "");  // transformers writes null for "none"
  const ModelConfig c = [&] {
    json cc = j;
    cc["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
    return parse_model_config(cc);
  }();
  EXPECT_EQ(c.quant.format, QuantConfig::Format::Fp8);
  EXPECT_EQ(c.quant.block, 128);
  EXPECT_EQ(c.quant.describe(), "fp8 (transformers), 128x128 block weight scales, dynamic activations");
}

TEST(Fp8Dtype, E4m3RoundTripsRoundsToEvenAndSaturates) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(f32_to_f8e4m3(f8e4m3_to_f32(uint8_t(c))), c) << c;
  }
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);   // halfway between 1 and 1.125: to the even 1
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);   // halfway between 1.125 and 1.25: to the even 1.25
  EXPECT_EQ(f32_to_f8e4m3(1000.0f), 0x7e);   // saturates at 448
  EXPECT_EQ(f32_to_f8e4m3(-1000.0f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(0.0009765625f), 0x00);  // 2^-10: halfway to the smallest subnormal, to even 0
  EXPECT_EQ(f32_to_f8e4m3(0.0029296875f), 0x02);  // 1.5 · 2^-9: halfway, to the even 2 · 2^-9
}

}  // namespace
