// Rotary position embeddings: inverse frequencies for every scaling type of transformers,
// and the cos/sin rows of given positions.
#pragma once
#include <cstdint>
#include <vector>

#include "loader/model_config.h"

namespace gale {

struct RopeFrequencies {
  std::vector<float> inv_freq;  // [rot_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn)
};

// seq_len: one past the largest position of the forward call; only "dynamic" depends on it
// (transformers recomputes its base once the sequence outgrows the original context).
RopeFrequencies rope_frequencies(const RopeConfig& rope, int64_t rot_dim, int64_t seq_len);

// cos/sin: [n, rot_dim / 2] for positions[0..n).
void rope_cos_sin(const RopeFrequencies& f, const int64_t* positions, int64_t n, float* cos, float* sin);

}  // namespace gale
