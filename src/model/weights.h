// The weights of a decoder-only transformer, pointing into the mapped checkpoint
// (or a synthetic buffer): matrices stay in their stored dtype.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "loader/model_config.h"

namespace gale {

class SafeTensors;

struct Linear {
  const void* w = nullptr;  // [out, in] in dtype
  DType dtype = DType::F32;
  int64_t out = 0, in = 0;
  std::vector<float> bias;  // [out] or empty
  size_t bytes() const { return size_t(out) * size_t(in) * dtype_size(dtype); }
};

struct ExpertWeights {
  Linear gate, up, down;  // w1, w3, w2 in Mixtral's naming
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [hidden]
  std::vector<float> q_norm, k_norm;       // [head_dim] (Qwen3) or empty
  Linear q, k, v, o;
  Linear gate, up, down;                   // dense MLP
  Linear router;                           // [num_experts, hidden] (MoE)
  std::vector<ExpertWeights> experts;      // MoE
};

struct ModelWeights {
  const void* embed = nullptr;  // [vocab, hidden]
  DType embed_dtype = DType::F32;
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;
  Linear lm_head;               // aliases embed when tie_word_embeddings
  std::shared_ptr<const void> storage;  // keeps the mapping / buffer alive
  size_t total_bytes = 0;       // every tensor of the checkpoint that the model uses
  std::vector<std::string> dtypes;  // distinct stored dtypes, for `gale info`
};

// Binds every tensor the config calls for; throws gale::Error naming a missing tensor or one
// whose shape or dtype disagrees with config.json.
ModelWeights bind_weights(std::shared_ptr<const SafeTensors> st, const ModelConfig& cfg);
// The tensors (name, shape) a checkpoint of cfg holds, in binding order, as its architecture
// names them (model/arch/): the layout of synthetic models.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_layout(const ModelConfig& cfg);

}  // namespace gale
