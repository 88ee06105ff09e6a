#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace gale {

namespace {
constexpr int64_t kBlockSize = 16;
}

std::vector<PerplexityWindow> perplexity_windows(int64_t n, int64_t ctx, int64_t stride) {
  if (n < 2) throw Error("perplexity needs at least 2 tokens");
  if (ctx < 2) throw Error("--ctx must be at least 2");
  if (stride < 1 || stride > ctx) throw Error("--stride must be in [1, ctx]");
  std::vector<PerplexityWindow> windows;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n), len = end - begin;
    const int64_t trg_len = end - prev_end;
    // Labels are the inputs with the first len - trg_len masked; position j is predicted by
    // the logits at j - 1, so the first position never counts.
    windows.push_back({begin, len, std::max<int64_t>(1, len - trg_len), std::min(trg_len, len) - 1});
    prev_end = end;
    if (end == n) break;
  }
  return windows;
}

WindowForward::WindowForward(Transformer& model, int64_t ctx) : model_(model) {
  const int64_t blocks = (ctx + kBlockSize - 1) / kBlockSize;
  kv_ = std::make_unique<KVCache>(model.config(), blocks, kBlockSize, model.kv_format(), &model.backend());
  table_.resize(size_t(blocks));
  for (size_t i = 0; i < table_.size(); ++i) table_[i] = int32_t(i);
}

WindowForward::~WindowForward() = default;

const std::vector<float>& WindowForward::run(std::span<const int32_t> ids, const PerplexityWindow& w) {
  SeqStep s{ids.subspan(size_t(w.begin), size_t(w.len)), 0, table_, SeqStep::Logits::All};
  model_.forward({&s, 1}, *kv_, logits_);
  return logits_;
}

double window_nll(const float* logits, int64_t vocab, std::span<const int32_t> ids, const PerplexityWindow& w) {
  double nll = 0;
  for (int64_t j = w.first; j < w.len; ++j) {
    const float* row = logits + (j - 1) * vocab;
    float m = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v] - m));
    nll += double(m) + std::log(sum) - double(row[ids[size_t(w.begin + j)]]);
  }
  return nll;
}

void perplexity_add(PerplexityResult& r, const PerplexityWindow& w, double nll) {
  // As the guide: the window's mean loss over its scored tokens, weighted by w.weight.
  const int64_t count = w.len - w.first;
  if (count > 0) r.nll_sum += nll / double(count) * double(w.weight);
  r.scored_tokens += w.weight;
  ++r.windows;
}

void perplexity_finish(PerplexityResult& r) { r.ppl = std::exp(r.nll_sum / double(r.scored_tokens)); }

PerplexityResult perplexity(Transformer& model, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<PerplexityWindow> windows = perplexity_windows(int64_t(ids.size()), ctx, stride);
  const int64_t V = model.config().vocab_size;
  WindowForward pass(model, ctx);
  PerplexityResult r;
  for (const PerplexityWindow& w : windows) {
    perplexity_add(r, w, window_nll(pass.run(ids, w).data(), V, ids, w));
    if (progress) progress(r.windows, int64_t(windows.size()));
  }
  perplexity_finish(r);
  return r;
}

}  // namespace gale
