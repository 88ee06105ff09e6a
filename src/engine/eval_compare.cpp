#include "engine/eval_compare.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace gale {

namespace {

// log(sum_v exp(row[v])) in double, and the row's argmax (first on ties).
double log_sum_exp(const float* row, int64_t vocab, int64_t& argmax) {
  argmax = std::max_element(row, row + vocab) - row;
  const double m = row[argmax];
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - m);
  return m + std::log(sum);
}

}  // namespace

RowComparison compare_rows(const float* reference, const float* model, int64_t vocab) {
  int64_t top_ref = 0, top_model = 0;
  const double lse_ref = log_sum_exp(reference, vocab, top_ref);
  const double lse_model = log_sum_exp(model, vocab, top_model);
  // sum_v p(v) (log p(v) - log q(v)); equal rows give exactly 0 (every difference is 0).
  double kl = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const double lp = double(reference[v]) - lse_ref, lq = double(model[v]) - lse_model;
    kl += std::exp(lp) * (lp - lq);
  }
  return {kl, int32_t(top_model), int32_t(top_ref)};
}

double quantile(std::vector<double>& values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(q, 0.0, 1.0) * double(values.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - double(lo)) * (values[hi] - values[lo]);
}

void check_comparable(const Transformer& model, const Transformer& reference) {
  const int64_t a = model.config().vocab_size, b = reference.config().vocab_size;
  if (a != b)
    throw Error("the model and the reference have different vocabularies (" + std::to_string(a) + " and " +
                std::to_string(b) + " entries): eval compares models that share a tokenizer");
}

EvalResult eval_compare(Transformer& model, Transformer& reference, std::span<const int32_t> ids, int64_t ctx,
                        int64_t stride, const std::function<void(int64_t, int64_t)>& progress) {
  check_comparable(model, reference);
  const std::vector<PerplexityWindow> windows = perplexity_windows(int64_t(ids.size()), ctx, stride);
  const int64_t V = model.config().vocab_size;
  WindowForward model_pass(model, ctx), reference_pass(reference, ctx);
  EvalResult r;
  std::vector<double> kls;
  double kl_sum = 0;
  for (const PerplexityWindow& w : windows) {
    const float* lm = model_pass.run(ids, w).data();
    const float* lr = reference_pass.run(ids, w).data();
    perplexity_add(r.model, w, window_nll(lm, V, ids, w));
    perplexity_add(r.reference, w, window_nll(lr, V, ids, w));
    // The positions the losses score: row j - 1 predicts token j.
    for (int64_t j = w.first; j < w.len; ++j) {
      const RowComparison c = compare_rows(lr + (j - 1) * V, lm + (j - 1) * V, V);
      kls.push_back(c.kl);
      kl_sum += c.kl;
      r.same_top1 += c.top1 == c.reference_top1;
    }
    ++r.windows;
    if (progress) progress(r.windows, int64_t(windows.size()));
  }
  perplexity_finish(r.model);
  perplexity_finish(r.reference);
  r.positions = int64_t(kls.size());
  if (r.positions > 0) {
    r.kl_mean = kl_sum / double(r.positions);
    r.top1_agreement = double(r.same_top1) / double(r.positions);
  }
  r.kl_p99 = quantile(kls, 0.99);  // sorts kls
  if (!kls.empty()) r.kl_max = kls.back();
  return r;
}

}  // namespace gale
