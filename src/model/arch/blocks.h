// The blocks layers are made of, bound under Hugging Face's usual names; architecture files
// compose them and name what differs.
#pragma once
#include <string>

#include "loader/config_reader.h"
#include "loader/model_config.h"
#include "model/weight_binder.h"

namespace gale {

// input_layernorm and post_attention_layernorm.
void bind_norms(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L);
// self_attn.{q,k,v,o}_proj (biases as c says), and q_norm / k_norm when c.qk_norm.
void bind_attention(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L);
// self_attn.<fused> [(heads + 2 kv_heads) * head_dim, hidden] split into q, k and v views,
// and self_attn.o_proj.
void bind_fused_attention(TensorBinder& b, const ModelConfig& c, const std::string& p, const std::string& fused,
                          LayerWeights& L);
// mlp.{gate,up,down}_proj (biases when c.mlp_bias).
void bind_mlp(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L);
// mlp.<fused> [2 * intermediate, hidden] split into gate and up views, and mlp.down_proj.
void bind_fused_mlp(TensorBinder& b, const ModelConfig& c, const std::string& p, const std::string& fused,
                    LayerWeights& L);
// A top-k routed MoE: <moe>.gate [experts, hidden] and <moe>.experts.<e>.{gate,down,up}.
struct MoeNames {
  std::string block, router, gate, down, up;  // Mixtral: block_sparse_moe, gate, w1, w2, w3
};
void bind_moe(TensorBinder& b, const ModelConfig& c, const std::string& p, const MoeNames& n, LayerWeights& L);

// The Llama layer (norms, attention, SwiGLU MLP), which most families use unchanged.
void bind_dense_layer(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L);

// The 4.x spelling of sliding windows, for configs without layer_types: every layer windowed.
void window_all_layers(const ConfigReader& r, ModelConfig& c);
// attention_bias: q/k/v and o biases together (Llama, Qwen3).
void read_attention_bias(const ConfigReader& r, ModelConfig& c);

}  // namespace gale
