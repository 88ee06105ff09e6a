// synthetic:NAME models: random weights of a named real shape, built in memory without files
// (like vLLM's dummy load format), for benchmarks.
#pragma once
#include <string>
#include <vector>

#include "loader/model_config.h"
#include "model/weights.h"

namespace gale {

// Names Gale knows ("llama3-8b", "llama3-1b", "qwen3-0.6b", "mixtral-tiny", ...).
std::vector<std::string> synthetic_model_names();
// The config.json of a named shape (throws gale::Error listing the known names).
ModelConfig synthetic_config(const std::string& name);
// Random bf16 weights for cfg, in one anonymous (huge-page-advised) mapping.
ModelWeights synthetic_weights(const ModelConfig& cfg, uint64_t seed = 1);

}  // namespace gale
