// Calibration activations: the model run once on the CPU over calibration tokens with a backend
// that keeps what flows into every projection and every RMSNorm. The one mechanism behind the
// statistics of AWQ's scale search (model/awq_search.h) and of pruning (model/prune.h).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "loader/model_config.h"
#include "model/weights.h"

namespace gale {

struct CalibrationRecord {
  int64_t rows = 0;  // calibration tokens run
  // Every projection's input rows by its tensor name: [k · rows, in] for a tensor run k times
  // per forward (the views of a fused tensor share its name).
  std::map<std::string, std::vector<float>> inputs;
  // With `norms`: the input of every RMSNorm over the hidden size, in call order within a
  // forward ([rows, hidden] each, the windows' rows in order): per layer the attention norm's (the layer's input hidden states) and the FFN norm's,
  // then the final norm's (the last layer's output). So layer i's input is norm_inputs[2i] and
  // its output norm_inputs[2i + 2].
  std::vector<std::vector<float>> norm_inputs;
};

// Runs at most max_tokens of `tokens` through the model on the CPU in f32, in windows of 512
// tokens (or the context, if shorter), each a prompt of its own; the rows of all windows are
// kept in order. w: a dense or MoE model of 16/32-bit weights as bound. `only`: the projections
// whose inputs are kept (empty: all of them). With `on_window`, each window's record (its rows
// only) is handed over after the window's forward and then cleared, so memory holds one window's
// activations, and the record returned is empty (its `rows` the total).
CalibrationRecord record_calibration(const ModelConfig& cfg, ModelWeights w, std::span<const int32_t> tokens,
                                     int64_t max_tokens = 512, bool norms = false,
                                     const std::set<std::string>& only = {},
                                     const std::function<void(const CalibrationRecord&)>& on_window = {});

}  // namespace gale
