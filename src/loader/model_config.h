// config.json / generation_config.json of Hugging Face causal LMs, in both the
// transformers 4.x layout (rope_theta + rope_scaling) and the 5.x one (rope_parameters).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "loader/quant_config.h"

namespace gale {

enum class RopeType { Default, Linear, Dynamic, Llama3, Yarn };
const char* rope_type_name(RopeType t);

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;
  double partial_rotary_factor = 1.0;
  int64_t original_max_position = 0;  // llama3 / yarn / dynamic: the pre-extension context
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;             // yarn (0 = absent)
  std::optional<double> attention_factor;                // yarn: explicit cos/sin scale
  bool truncate = true;                                  // yarn
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", ...
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;    // q/k/v projections carry biases (Qwen2 always; Llama with attention_bias)
  bool o_bias = false;      // o_proj bias (Llama attention_bias)
  bool mlp_bias = false;
  bool qk_norm = false;     // per-head RMSNorm of q and k before RoPE (Qwen3)
  std::vector<int64_t> layer_window;  // per layer: sliding window in tokens, 0 = full attention
  int64_t sliding_window = 0;         // config.json's sliding_window (0 = null / absent)
  int64_t num_experts = 0;            // 0 = dense MLP
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = true;         // renormalize the top-k routing weights (Mixtral: always)
  RopeConfig rope;
  std::string torch_dtype;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  QuantConfig quant;                  // quantization_config (loader/quant_config.h)
};

// The JSON of config.json / generation_config.json, nesting bounded (core/json_depth.h); throws
// gale::Error naming `what` for invalid or too deeply nested JSON.
nlohmann::json parse_config_json(std::string_view text, const std::string& what);
// The file at `path` through parse_config_json.
nlohmann::json read_config_file(const std::string& path);

// The keys every architecture shares: sizes, RoPE, token ids, the 5.x `layer_types` windows,
// quantization refused by name. The architecture's own keys (biases, norms, experts, its 4.x
// window spelling) are read by its file in model/arch/; parse_model_config (model/arch/arch.h)
// runs both. Throws gale::Error naming the key and the problem (`what` names the file).
ModelConfig parse_common_config(const nlohmann::json& j, const std::string& what = "config.json");

struct GenerationDefaults {
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> bos_token_id;
  bool do_sample = false;
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  std::optional<int> max_new_tokens;
};

// generation_config.json when present (missing file -> defaults from the model config).
GenerationDefaults load_generation_defaults(const std::string& model_dir, const ModelConfig& cfg);
GenerationDefaults parse_generation_config(const nlohmann::json& j, const ModelConfig& cfg, const std::string& what);

}  // namespace gale
