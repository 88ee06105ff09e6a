#include "loader/checkpoint_check.h"

#include <map>
#include <set>
#include <string_view>

#include "core/error.h"
#include "loader/safetensors.h"

namespace gale {

namespace {

// The index after `prefix` at `pos` of `name` ("model.layers.12.mlp..." -> 12) when digits and
// a '.' follow; -1 otherwise. At most 9 digits: no real index is longer, and int64 cannot wrap.
int64_t index_after(std::string_view name, std::string_view prefix, size_t pos = 0) {
  if (name.substr(pos, prefix.size()) != prefix) return -1;
  size_t i = pos + prefix.size(), j = i;
  while (j < name.size() && j - i < 10 && name[j] >= '0' && name[j] <= '9') ++j;
  if (j == i || j - i > 9 || j >= name.size() || name[j] != '.') return -1;
  return std::stoll(std::string(name.substr(i, j - i)));
}

// The first of 0..n-1 not in `have` (-1 when all are): at most have.size() + 1 steps.
int64_t first_missing(const std::set<int64_t>& have, int64_t n) {
  int64_t i = 0;
  for (int64_t v : have) {
    if (v >= n || v != i) break;
    ++i;
  }
  return i < n ? i : -1;
}

constexpr std::string_view kLayers = "model.layers.";

}  // namespace

void check_config_against_checkpoint(const ModelConfig& cfg, const SafeTensors& st, std::string_view experts_prefix) {
  std::set<int64_t> layers;
  std::map<int64_t, std::set<int64_t>> experts;  // layer -> expert indices present
  for (const auto& [name, t] : st.tensors()) {
    int64_t l = index_after(name, kLayers);
    if (l < 0) continue;
    layers.insert(l);
    const size_t after = kLayers.size() + std::to_string(l).size() + 1;
    if (experts_prefix.empty()) continue;
    if (int64_t e = index_after(name, experts_prefix, after); e >= 0) experts[l].insert(e);
  }
  if (int64_t l = first_missing(layers, cfg.num_layers); l >= 0)
    throw Error("config.json has num_hidden_layers = " + std::to_string(cfg.num_layers) +
                " but the checkpoint holds " + std::to_string(layers.size()) + " layers: no tensor named " +
                std::string(kLayers) + std::to_string(l) + ".*");
  if (cfg.num_experts == 0) return;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::set<int64_t>& have = experts[l];
    if (int64_t e = first_missing(have, cfg.num_experts); e >= 0)
      throw Error("config.json has num_local_experts = " + std::to_string(cfg.num_experts) +
                  " but layer " + std::to_string(l) + " of the checkpoint holds " + std::to_string(have.size()) +
                  " experts: no tensor named " + std::string(kLayers) + std::to_string(l) + "." +
                  std::string(experts_prefix) + std::to_string(e) + ".*");
  }
}

bool is_quantization_tensor_name(const std::string& name) {
  // The last dotted component, as the formats name them: GPTQ / AWQ (qweight, qzeros, scales,
  // g_idx), FP8 and compressed-tensors (weight_scale, weight_scale_inv, input_scale,
  // weight_zero_point, weight_packed, weight_shape, weight_g_idx, weight_global_scale), KV-cache scales
  // (k_scale, v_scale, kv_scale, q_scale), bitsandbytes (SCB, absmax, quant_map, quant_state).
  static const std::set<std::string_view> kLeaves = {
      "qweight", "qzeros", "scales", "g_idx", "zeros", "weight_scale", "weight_scale_inv", "scale_inv",
      "input_scale", "output_scale", "weight_zero_point", "input_zero_point", "weight_packed", "weight_shape", "weight_g_idx",
      "weight_global_scale", "input_global_scale", "k_scale", "v_scale", "q_scale", "kv_scale", "SCB",
      "absmax", "quant_map", "nested_absmax", "nested_quant_map"};
  std::string_view n(name);
  std::string_view leaf = n.substr(n.rfind('.') == std::string_view::npos ? 0 : n.rfind('.') + 1);
  if (kLeaves.count(leaf)) return true;
  // bitsandbytes 4-bit keeps its state as "<weight>.quant_state.bitsandbytes__nf4" and the like.
  return n.find(".quant_state") != std::string_view::npos || n.find("weight_scale") != std::string_view::npos;
}

void check_unbound_tensors(const SafeTensors& st, const std::unordered_set<std::string>& bound) {
  for (const auto& [name, t] : st.tensors()) {
    if (bound.count(name)) continue;
    if (is_quantization_tensor_name(name))
      throw Error("tensor '" + name + "' (" + t.file +
                  ") holds quantization data, which Gale does not apply: quantized checkpoints are not "
                  "supported yet (supported: unquantized F32, F16, BF16, F8_E4M3 and F8_E5M2 weights)");
  }
}

}  // namespace gale
