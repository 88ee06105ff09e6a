// Perplexity over a token stream with sliding windows, exactly as the Hugging Face perplexity
// guide computes it (so figures compare one to one with transformers).
#pragma once
#include <cstdint>
#include <functional>
#include <span>

#include "model/transformer.h"

namespace gale {

struct PerplexityResult {
  double ppl = 0;
  double nll_sum = 0;       // the guide's weighted sum
  int64_t scored_tokens = 0;  // the guide's token count
  int64_t windows = 0;
};

// Windows of `ctx` tokens start every `stride` tokens; each scores only the tokens not scored by
// the previous window. As in the guide, a window's mean loss is weighted by its number of labels
// minus one. progress(done_windows, total_windows) is called after each window.
PerplexityResult perplexity(Transformer& model, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace gale
