// Qwen2ForCausalLM and Qwen3ForCausalLM. Qwen2: q/k/v biases always, none on o_proj. Qwen3:
// biases with attention_bias and a per-head RMSNorm of q and k before RoPE. Both spell the
// 4.x sliding window as use_sliding_window, applied from layer max_window_layers on.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void qwen_window(const ConfigReader& r, ModelConfig& c) {
  if (r.has("layer_types") || !r.boolean_or("use_sliding_window", false) || c.sliding_window <= 0) return;
  const int64_t first = r.non_negative_or("max_window_layers", c.num_layers, kMaxLayers);
  for (int64_t i = first; i < c.num_layers; ++i) c.layer_window[size_t(i)] = c.sliding_window;
}

void configure_qwen2(const ConfigReader& r, ModelConfig& c) {
  c.qkv_bias = true;
  qwen_window(r, c);
}

void configure_qwen3(const ConfigReader& r, ModelConfig& c) {
  read_attention_bias(r, c);
  c.qk_norm = true;
  qwen_window(r, c);
}

}  // namespace

const Architecture& qwen2_architecture() {
  static const Architecture a{{"Qwen2ForCausalLM"}, configure_qwen2, bind_dense_layer};
  return a;
}

const Architecture& qwen3_architecture() {
  static const Architecture a{{"Qwen3ForCausalLM"}, configure_qwen3, bind_dense_layer};
  return a;
}

}  // namespace gale
