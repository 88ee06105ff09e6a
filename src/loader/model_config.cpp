#include "loader/model_config.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"
#include "loader/config_reader.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace gale {

const char* rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Dynamic: return "dynamic";
    case RopeType::Llama3: return "llama3";
    case RopeType::Yarn: return "yarn";
  }
  return "?";
}

namespace {

std::vector<int32_t> parse_id_or_list(const json& v, const std::string& what, const char* key) {
  std::vector<int32_t> out;
  if (v.is_null()) return out;
  auto id = [&](const json& e) {  // get<int32_t> would wrap 4294967297 to 1
    if (!e.is_number_integer()) throw Error(what + ": '" + key + "' must hold integer token ids");
    if (e.is_number_unsigned() ? e.get<uint64_t>() > uint64_t(INT32_MAX)
                               : e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX)
      throw Error(what + ": '" + key + "' holds a token id out of range: " + e.dump());
    return e.get<int32_t>();
  };
  if (v.is_number_integer()) {
    out.push_back(id(v));
    return out;
  }
  if (v.is_array()) {
    if (v.size() > 4096) throw Error(what + ": '" + key + "' lists more than 4096 token ids");
    for (auto& e : v) out.push_back(id(e));
    return out;
  }
  throw Error(what + ": '" + key + "' must be a token id or a list of them");
}

// original_max_position_embeddings of dynamic / yarn scaling (max_position_embeddings when
// absent); it divides, so it must be positive.
int64_t original_context(const ConfigReader& p, int64_t max_pos) {
  const int64_t v = p.has("original_max_position_embeddings")
                        ? p.positive("original_max_position_embeddings", kMaxPositions) : max_pos;
  if (v <= 0) p.fail("original_max_position_embeddings", "is required when max_position_embeddings is 0");
  return v;
}

RopeConfig parse_rope(const json& j, const ConfigReader& top, int64_t max_pos) {
  RopeConfig r;
  // 5.x: rope_parameters holds rope_theta and the scaling; 4.x: rope_theta + rope_scaling.
  const json* params = nullptr;
  if (top.has("rope_parameters")) {
    params = &j["rope_parameters"];
    if (!params->is_object()) top.fail("rope_parameters", "must be an object");
    // Models with per-layer-type rope (e.g. {"full_attention": {...}}) are not supported yet.
    if (params->contains("full_attention") || params->contains("sliding_attention"))
      top.fail("rope_parameters", "per-layer-type RoPE parameters are not supported");
  } else if (top.has("rope_scaling")) {
    params = &j["rope_scaling"];
    if (!params->is_object()) top.fail("rope_scaling", "must be an object or null");
  }
  r.theta = top.f64_or("rope_theta", 10000.0);
  r.partial_rotary_factor = top.f64_or("partial_rotary_factor", 1.0);
  if (!params) return r;
  ConfigReader p{*params, top.what + ": rope parameters"};
  if (p.has("rope_theta")) r.theta = p.f64("rope_theta");
  if (p.has("partial_rotary_factor")) r.partial_rotary_factor = p.f64("partial_rotary_factor");
  std::string type = "default";
  if (p.has("rope_type")) type = (*params)["rope_type"].get<std::string>();
  else if (p.has("type")) type = (*params)["type"].get<std::string>();
  if (type == "default") {
    r.type = RopeType::Default;
  } else if (type == "linear") {
    r.type = RopeType::Linear;
    r.factor = p.f64("factor");
  } else if (type == "dynamic") {
    r.type = RopeType::Dynamic;
    r.factor = p.f64("factor");
    r.original_max_position = original_context(p, max_pos);
  } else if (type == "llama3") {
    r.type = RopeType::Llama3;
    r.factor = p.f64("factor");
    r.low_freq_factor = p.f64("low_freq_factor");
    r.high_freq_factor = p.f64("high_freq_factor");
    r.original_max_position = p.positive("original_max_position_embeddings", kMaxPositions);
  } else if (type == "yarn") {
    r.type = RopeType::Yarn;
    r.original_max_position = original_context(p, max_pos);
    r.factor = p.has("factor") ? p.f64("factor") : double(max_pos) / double(r.original_max_position);
    if (p.has("attention_factor")) r.attention_factor = p.f64("attention_factor");
    r.beta_fast = p.f64_or("beta_fast", 32.0);
    r.beta_slow = p.f64_or("beta_slow", 1.0);
    r.mscale = p.f64_or("mscale", 0.0);
    r.mscale_all_dim = p.f64_or("mscale_all_dim", 0.0);
    r.truncate = p.boolean_or("truncate", true);
  } else {
    throw Error(top.what + ": unsupported rope type '" + type + "' (supported: default, linear, dynamic, llama3, yarn)");
  }
  if (r.factor <= 0) throw Error(top.what + ": rope factor must be positive");
  if (r.theta <= 1.0) throw Error(top.what + ": rope_theta must be > 1");
  return r;
}

}  // namespace

static ModelConfig parse_common_config_checked(const json& j, const std::string& what);

ModelConfig parse_common_config(const json& j, const std::string& what) {
  try {
    return parse_common_config_checked(j, what);
  } catch (const json::exception& e) {  // a value of the wrong JSON type deep inside
    throw Error(what + ": " + e.what());
  }
}

static ModelConfig parse_common_config_checked(const json& j, const std::string& what) {
  if (!j.is_object()) throw Error(what + ": expected a JSON object");
  ConfigReader r{j, what};
  ModelConfig c;
  if (!r.has("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string())
    r.fail("architectures", "must be a non-empty list of architecture names");
  c.architecture = j["architectures"][0].get<std::string>();
  if (r.has("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"].get<std::string>();
  c.quant = parse_quant_config(r);
  c.vocab_size = r.positive("vocab_size", kMaxVocab);
  c.hidden_size = r.positive("hidden_size", kMaxHidden);
  c.intermediate_size = r.positive("intermediate_size", kMaxIntermediate);
  c.num_layers = r.positive("num_hidden_layers", kMaxLayers);
  c.num_heads = r.positive("num_attention_heads", kMaxHeads);
  c.num_kv_heads = r.has("num_key_value_heads") ? r.positive("num_key_value_heads", kMaxHeads) : c.num_heads;
  c.head_dim = r.has("head_dim") ? r.positive("head_dim", kMaxHeadDim) : c.hidden_size / c.num_heads;
  if (!r.has("head_dim") && c.hidden_size % c.num_heads != 0)
    r.fail("hidden_size", "is not divisible by num_attention_heads and no head_dim is given");
  if (c.num_heads % c.num_kv_heads != 0) r.fail("num_key_value_heads", "must divide num_attention_heads");
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for RoPE");
  c.max_position_embeddings = r.non_negative_or("max_position_embeddings", 4096, kMaxPositions);
  c.rms_norm_eps = r.f64_or("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  if (r.has("hidden_act") && j["hidden_act"] != "silu")
    r.fail("hidden_act", "'" + j["hidden_act"].dump() + "' is not supported (only silu)");
  if (r.has("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();
  if (r.has("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"].get<std::string>();

  // Sliding-window attention, per layer, as the 5.x layout lists it (layer_types); an
  // architecture reads its 4.x spelling when layer_types is absent.
  c.layer_window.assign(size_t(c.num_layers), 0);
  c.sliding_window = r.i64_or("sliding_window", 0);
  if (c.sliding_window < 0 || c.sliding_window > kMaxPositions) r.fail("sliding_window", "must be positive or null");
  if (r.has("layer_types")) {
    const json& lt = j["layer_types"];
    if (!lt.is_array() || int64_t(lt.size()) != c.num_layers)
      r.fail("layer_types", "must list one type per layer");
    for (size_t i = 0; i < lt.size(); ++i) {
      if (lt[i] == "sliding_attention") {
        if (c.sliding_window <= 0) r.fail("sliding_window", "is required by layer_types 'sliding_attention'");
        c.layer_window[i] = c.sliding_window;
      } else if (lt[i] != "full_attention") {
        r.fail("layer_types", "has unknown entry " + lt[i].dump());
      }
    }
  }

  c.rope = parse_rope(j, r, c.max_position_embeddings);
  if (!(c.rope.partial_rotary_factor > 0 && c.rope.partial_rotary_factor <= 1))
    r.fail("partial_rotary_factor", "must be in (0, 1]");
  int64_t rot = int64_t(double(c.head_dim) * c.rope.partial_rotary_factor);
  if (rot <= 0 || rot % 2 || rot > c.head_dim) r.fail("partial_rotary_factor", "gives an invalid rotary dimension");

  if (r.has("bos_token_id")) {
    auto v = parse_id_or_list(j["bos_token_id"], what, "bos_token_id");
    if (!v.empty()) c.bos_token_id = v[0];
  }
  if (r.has("eos_token_id")) c.eos_token_ids = parse_id_or_list(j["eos_token_id"], what, "eos_token_id");
  return c;
}

json parse_config_json(std::string_view text, const std::string& what) {
  check_json_depth(text, what);  // error messages dump() values, which recurses
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(what + ": invalid JSON: " + e.what());
  }
}

json read_config_file(const std::string& path) {
  const fs::path p(path);
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error("cannot read " + p.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_config_json(text, p.string());
}

static GenerationDefaults parse_generation_config_checked(const json& j, const ModelConfig& cfg,
                                                         const std::string& what);

GenerationDefaults parse_generation_config(const json& j, const ModelConfig& cfg, const std::string& what) {
  try {
    return parse_generation_config_checked(j, cfg, what);
  } catch (const json::exception& e) {
    throw Error(what + ": " + e.what());
  }
}

static GenerationDefaults parse_generation_config_checked(const json& j, const ModelConfig& cfg,
                                                         const std::string& what) {
  GenerationDefaults g;
  g.eos_token_ids = cfg.eos_token_ids;
  g.bos_token_id = cfg.bos_token_id;
  if (!j.is_object()) throw Error(what + ": expected a JSON object");
  ConfigReader r{j, what};
  if (r.has("eos_token_id")) g.eos_token_ids = parse_id_or_list(j["eos_token_id"], what, "eos_token_id");
  if (r.has("bos_token_id")) {
    auto v = parse_id_or_list(j["bos_token_id"], what, "bos_token_id");
    if (!v.empty()) g.bos_token_id = v[0];
  }
  g.do_sample = r.boolean_or("do_sample", false);
  g.temperature = float(r.f64_or("temperature", 1.0));
  g.top_k = int(r.non_negative_or("top_k", 0, INT32_MAX));
  g.top_p = float(r.f64_or("top_p", 1.0));
  g.min_p = float(r.f64_or("min_p", 0.0));
  g.repetition_penalty = float(r.f64_or("repetition_penalty", 1.0));
  if (r.has("max_new_tokens")) g.max_new_tokens = int(r.non_negative_or("max_new_tokens", 0, INT32_MAX));
  return g;
}

GenerationDefaults load_generation_defaults(const std::string& model_dir, const ModelConfig& cfg) {
  fs::path p = fs::path(model_dir) / "generation_config.json";
  if (!fs::exists(p)) {
    GenerationDefaults g;
    g.eos_token_ids = cfg.eos_token_ids;
    g.bos_token_id = cfg.bos_token_id;
    return g;
  }
  return parse_generation_config(read_config_file(p.string()), cfg, p.string());
}

}  // namespace gale
