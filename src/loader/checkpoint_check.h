// Checks of a checkpoint's tensor list against config.json, made where binding cannot make them.
#pragma once
#include <string>
#include <string_view>
#include <unordered_set>

#include "loader/model_config.h"

namespace gale {

class SafeTensors;

// Before anything is sized from the config: every count config.json gives (num_hidden_layers,
// num_local_experts) must be backed by tensors in the checkpoint, so a 200-byte config.json
// saying num_hidden_layers: 1e9 fails here instead of allocating a billion layers first. Each
// layer's (and expert's) shapes are checked by binding; this only checks the counts, in memory
// bounded by the checkpoint's own header. Throws gale::Error naming the first missing prefix.
// experts_prefix: how the architecture names its experts under a layer
// ("block_sparse_moe.experts."), for a config with num_local_experts.
void check_config_against_checkpoint(const ModelConfig& cfg, const SafeTensors& st, std::string_view experts_prefix);

// After binding: a tensor the model did not bind that holds quantization data (scales, zero
// points, packed integer weights: `*weight_scale*`, `*scale_inv`, `qweight`, `qzeros`,
// `scales`, `g_idx`, `input_scale`, `k_scale`, ...) means the weights bound would be used
// unscaled, i.e. silently wrong: throws gale::Error naming it. Other unbound tensors are
// ignored as transformers ignores them (a rotary `inv_freq` buffer some checkpoints carry).
void check_unbound_tensors(const SafeTensors& st, const std::unordered_set<std::string>& bound);

// True for names of tensors that only quantized formats carry (the rule above).
bool is_quantization_tensor_name(const std::string& name);

}  // namespace gale
