// `gale eval`: a model against a reference over the perplexity guide's windows
// (engine/perplexity.h): both perplexities, and on every scored position the KL divergence
// KL(reference || model) of the next-token distributions and whether their argmax agrees
// (llama.cpp's --kl-divergence figures). The reference is typically the same checkpoint
// without quantize-at-load, or another model folder with the same tokenizer.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/perplexity.h"
#include "model/transformer.h"

namespace gale {

// One position: the two rows of logits over the same vocabulary.
struct RowComparison {
  double kl = 0;               // KL(reference || model), softmax in double over the whole row
  int32_t top1 = 0;            // the model's argmax (lowest id on ties)
  int32_t reference_top1 = 0;  // the reference's
};
RowComparison compare_rows(const float* reference, const float* model, int64_t vocab);

// The q-quantile (0 <= q <= 1) of values, linear between order statistics (numpy's default);
// 0 for an empty list. Reorders values.
double quantile(std::vector<double>& values, double q);

struct EvalResult {
  PerplexityResult model, reference;  // each exactly as perplexity() computes it
  int64_t positions = 0;              // scored positions compared (the windows' scored tokens)
  int64_t same_top1 = 0;              // positions where both argmaxes agree
  double top1_agreement = 0;          // same_top1 / positions
  double kl_mean = 0, kl_max = 0, kl_p99 = 0;
  int64_t windows = 0;
};

// Throws gale::Error unless the two models score the same vocabulary.
void check_comparable(const Transformer& model, const Transformer& reference);

// Runs every window through both models (one window of logits of each held at a time).
// progress(done_windows, total_windows) is called after each window. Throws gale::Error as
// perplexity() does, and for models that check_comparable refuses.
EvalResult eval_compare(Transformer& model, Transformer& reference, std::span<const int32_t> ids, int64_t ctx,
                        int64_t stride, const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace gale
