// `gale prune`: a 16/32-bit Hugging Face checkpoint folder rewritten with weights removed.
//
//   magnitude     unstructured: in every row of every layer projection the floor(S · in)
//                 weights of least |W| are zeroed (per-output-row comparison groups, as the
//                 Wanda paper compares; ties: the lower column goes first);
//   wanda         unstructured, score |W_ij| · ‖X_j‖₂ (Sun et al. 2023): X the projection's
//                 input over the calibration text (model/calibration.h), per row as above;
//   2:4           semi-structured: in every group of 4 consecutive input weights of a row the 2
//                 of least score are zeroed (score |W|, or Wanda's with score "wanda"); S = 0.5;
//   ffn-channels  structured: round(S · intermediate) channels of every layer's MLP removed
//                 (rows of gate and up, columns of down), the same count in every layer (a Llama
//                 config has one intermediate_size), those of least ‖h_j‖₂ · ‖down[:, j]‖₂,
//                 h the down projection's input over the calibration text; then down's kept
//                 columns are refit by least squares to give the full MLP's outputs on those
//                 inputs (prune_refit_columns; refit = false keeps them as they were);
//   heads         structured: round(S · num_key_value_heads) KV groups of every layer removed
//                 with their query heads (rows of q, k, v; columns of o), those whose o-columns
//                 carry least: Σ over the group's columns c of mean|a_c| · ‖o[:, c]‖₂, a the o
//                 projection's input; head_dim stays (written into config.json);
//   layers        structured: round(S · num_hidden_layers) whole layers removed, those whose
//                 output hidden states are most like their input (mean cosine similarity over
//                 the calibration tokens), the rest renumbered.
// Unstructured and 2:4 results keep every shape and store the zeros (compressed-tensors'
// `sparsity_config` with format "dense", which every loader reads as plain weights); structured
// results are smaller dense checkpoints with a config.json transformers reads as well. What is
// pruned is what the architecture binds as a layer projection (for_each_projection): never the
// embeddings, norms or the LM head. Written as gale quantize writes (model/checkpoint_folder.h):
// into a partial folder, loaded back, renamed over --out.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace gale {

enum class PruneMethod { Magnitude, Wanda, Semi24, FfnChannels, Heads, Layers };
// "magnitude", "wanda", "2:4", "ffn-channels", "heads", "layers"; throws gale::Error listing them.
PruneMethod parse_prune_method(const std::string& s);
const char* prune_method_name(PruneMethod m);
// Whether the method measures activations (needs calibration tokens).
bool prune_needs_calibration(PruneMethod m, const std::string& score);

struct PruneOptions {
  std::string source;                 // -m: a folder with config.json and 16/32-bit *.safetensors
  std::string out;                    // --out
  std::string method;                 // --method
  double sparsity = NAN;              // --sparsity in [0, 1); NaN: unset (2:4 takes 0.5)
  std::string score;                  // --score for 2:4: "magnitude" (default) or "wanda"
  std::vector<int32_t> calib_tokens;  // calibration tokens (the CLI tokenizes --calib)
  int64_t calib_max_tokens = 4096;    // at most this many are run (windows of 512)
  bool refit = true;                  // ffn-channels: down's kept columns refit by least squares
  bool force = false;                 // --force: replace a non-empty --out
  uint64_t max_shard_bytes = 4'000'000'000;
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> progress;  // may throw to abandon
};

struct PruneSummary {
  std::string out;
  std::string method;
  double sparsity = 0;
  int64_t matrices = 0;               // matrices pruned (zeroed in place or narrowed)
  uint64_t params_in = 0, params_out = 0;  // elements of every tensor, before and after
  uint64_t zeros = 0;                 // unstructured / 2:4: weights zeroed
  uint64_t bytes_in = 0, bytes_out = 0;    // tensor data
  size_t files = 0;
  std::string change;                 // "intermediate_size 1024 -> 768", "layers 8 -> 6 (removed 3, 5)", ...
};

// Throws gale::Error (one line) for a bad method or sparsity, missing calibration tokens where
// the method needs them, an unsupported checkpoint (quantized, MoE or fused projections where
// the method needs plain ones), an --out that cannot be written, and any I/O failure.
PruneSummary prune_checkpoint(const PruneOptions& o);

// The masks and choices, public for their tests. A mask holds 1 for each weight to zero.
// scores: [rows, cols] row-major.
// Per row the floor(sparsity · cols) lowest scores (ties: lower column first).
std::vector<uint8_t> prune_mask_per_row(std::span<const float> scores, int64_t rows, int64_t cols, double sparsity);
// In every group of 4 consecutive columns of a row (cols a multiple of 4) the 2 lowest.
std::vector<uint8_t> prune_mask_24(std::span<const float> scores, int64_t rows, int64_t cols);
// The score of each weight: |W| (in_norm empty) or |W_ij| · in_norm[j] (Wanda).
std::vector<float> prune_scores(std::span<const float> w, int64_t rows, int64_t cols, std::span<const float> in_norm);
// W [out, in] narrowed to the input columns `keep` and refit by least squares on the inputs
// x [n, in] (ffn-channels' down projection; the rule beside its code): [out, keep.size()].
std::vector<float> prune_refit_columns(std::span<const float> w, int64_t out, int64_t in, std::span<const float> x,
                                       std::span<const int64_t> keep);
// The indices of the `keep` largest importances, ascending (ties: the lower index is kept).
std::vector<int64_t> keep_most_important(std::span<const double> importance, int64_t keep);

}  // namespace gale
