#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace gale {

PerplexityResult perplexity(Transformer& model, std::span<const int32_t> ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t n = int64_t(ids.size());
  if (n < 2) throw Error("perplexity needs at least 2 tokens");
  if (ctx < 2) throw Error("--ctx must be at least 2");
  if (stride < 1 || stride > ctx) throw Error("--stride must be in [1, ctx]");
  const int64_t V = model.config().vocab_size, bs = 16;
  const int64_t total_windows = std::max<int64_t>(1, (std::max<int64_t>(n - ctx, 0) + stride - 1) / stride + 1);
  KVCache kv(model.config(), (ctx + bs - 1) / bs, bs, model.kv_format(), &model.backend());
  std::vector<int32_t> table(static_cast<size_t>((ctx + bs - 1) / bs));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
  std::vector<float> logits;
  PerplexityResult r;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n), len = end - begin;
    const int64_t trg_len = end - prev_end;
    SeqStep s{ids.subspan(size_t(begin), size_t(len)), 0, table, SeqStep::Logits::All};
    model.forward({&s, 1}, kv, logits);
    // Labels are the inputs with the first len - trg_len masked; position j is predicted by
    // the logits at j - 1, so the first position never counts.
    double nll = 0;
    int64_t count = 0;
    for (int64_t j = std::max<int64_t>(1, len - trg_len); j < len; ++j) {
      const float* row = logits.data() + (j - 1) * V;
      float m = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v] - m));
      nll += double(m) + std::log(sum) - double(row[ids[size_t(begin + j)]]);
      ++count;
    }
    const int64_t weight = std::min(trg_len, len) - 1;  // the guide's num_valid_tokens - batch_size
    if (count > 0) r.nll_sum += nll / double(count) * double(weight);
    r.scored_tokens += weight;
    ++r.windows;
    if (progress) progress(r.windows, total_windows);
    prev_end = end;
    if (end == n) break;
  }
  r.ppl = std::exp(r.nll_sum / double(r.scored_tokens));
  return r;
}

}  // namespace gale
