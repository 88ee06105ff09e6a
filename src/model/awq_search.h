// Activation-aware weight scaling (AWQ, Lin et al. 2023) for `gale quantize --awq`: input
// channels that carry large activations are scaled up before rounding, and the activations
// down by the same factor, so their weights lose less to the rounding.
//
// The model runs on the CPU over calibration tokens with a backend that records every
// projection's input rows; per layer and per group of projections sharing an input (q|k|v,
// o, gate|up, down) the scales s = mean|x|^α (normalized so that max · min = 1) are searched
// over α ∈ {0, 0.05, ..., 0.95}, minimizing ‖X·Wᵀ − (X / s)·Q(W · s)ᵀ‖² summed over the group
// (Q: model/int_quantize.h's round to nearest); α = 0 is plain rounding, so a layer is never
// worse than that on its calibration rows. 1/s is folded where the input comes from: the
// RMSNorm weight before q|k|v and before gate|up, the rows of up before down, the rows of v
// before o (only when num_heads == num_kv_heads, so that v's outputs are o's inputs; else o is
// left unscaled, as AWQ does for GQA).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "loader/model_config.h"
#include "model/int_quantize.h"
#include "model/weights.h"

namespace gale {

struct AwqLayerScales {
  std::vector<float> qkv, o, gate_up, down;  // [in] of each group; o empty: not scaled
};

// cfg / w: a dense, unfused 16/32-bit model (Llama, Mistral, Qwen2, Qwen3 layouts); throws
// gale::Error for MoE or fused-projection models and for fewer than 16 calibration tokens.
std::vector<AwqLayerScales> awq_search(const ModelConfig& cfg, ModelWeights w, std::span<const int32_t> tokens,
                                       const IntQuantSpec& q);

}  // namespace gale
