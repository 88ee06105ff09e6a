// Perplexity over a token stream with sliding windows, exactly as the Hugging Face perplexity
// guide computes it (so figures compare one to one with transformers). The pieces (windows, a
// model's window pass, a window's loss) are public so that `gale eval` (engine/eval_compare.h)
// scores the same positions with the same arithmetic.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "model/transformer.h"

namespace gale {

struct PerplexityResult {
  double ppl = 0;
  double nll_sum = 0;       // the guide's weighted sum
  int64_t scored_tokens = 0;  // the guide's token count
  int64_t windows = 0;
};

// One window of the guide: tokens [begin, begin + len) go through the model; positions
// first..len-1 of the window are scored, each predicted by the logits one position earlier
// (first >= 1: the window's first token has no prediction).
struct PerplexityWindow {
  int64_t begin = 0, len = 0;
  int64_t first = 1;
  int64_t weight = 0;  // the guide's num_valid_tokens - batch_size: its loss's weight
};

// Windows of `ctx` tokens start every `stride` tokens over n tokens; each scores only the tokens
// not scored by the previous window. Throws gale::Error for n < 2, ctx < 2, stride outside
// [1, ctx].
std::vector<PerplexityWindow> perplexity_windows(int64_t n, int64_t ctx, int64_t stride);

// Runs windows through one model: one KV cache of ctx tokens in the model's backend, reused by
// every window, and the last window's logits.
class WindowForward {
 public:
  WindowForward(Transformer& model, int64_t ctx);
  ~WindowForward();
  // The window's logits, [w.len, vocab]; valid until the next call.
  const std::vector<float>& run(std::span<const int32_t> ids, const PerplexityWindow& w);

 private:
  Transformer& model_;
  std::unique_ptr<KVCache> kv_;
  std::vector<int32_t> table_;
  std::vector<float> logits_;
};

// The summed negative log-likelihood of the window's scored tokens (softmax in double) from its
// logits [w.len, vocab]; ids are the whole stream.
double window_nll(const float* logits, int64_t vocab, std::span<const int32_t> ids, const PerplexityWindow& w);
// Adds a window's summed loss to r as the guide weighs it; perplexity_finish sets r.ppl.
void perplexity_add(PerplexityResult& r, const PerplexityWindow& w, double nll);
void perplexity_finish(PerplexityResult& r);

// The guide's perplexity of ids through model. progress(done_windows, total_windows) is called
// after each window.
PerplexityResult perplexity(Transformer& model, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace gale
