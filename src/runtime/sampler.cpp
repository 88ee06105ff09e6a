#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.h"

namespace gale {

void validate(const SamplingParams& p) {
  auto bad = [](const std::string& m) { throw Error(m); };
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) bad("temperature must be >= 0");
  if (p.top_k < 0) bad("top_k must be >= 0");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) bad("min_p must be in [0, 1]");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) bad("repetition_penalty must be > 0");
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) bad("presence_penalty must be in [-2, 2]");
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) bad("frequency_penalty must be in [-2, 2]");
}

uint64_t Rng::next() {
  uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void Rng::rewind(uint64_t n) { s_ -= n * 0x9E3779B97F4A7C15ull; }

double Rng::uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }

int32_t argmax(std::span<const float> v) {
  int32_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[size_t(best)]) best = int32_t(i);
  return best;
}

Sampler::Sampler(const SamplingParams& p, std::span<const int32_t> prompt)
    : p_(p), rng_(p.seed), seen_(prompt.begin(), prompt.end()) {
  validate(p_);
  std::sort(seen_.begin(), seen_.end());
  seen_.erase(std::unique(seen_.begin(), seen_.end()), seen_.end());
  prompt_ids_ = seen_;
}

void Sampler::rollback(std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    auto it = std::lower_bound(out_ids_.begin(), out_ids_.end(), id);
    GALE_ASSERT(it != out_ids_.end() && *it == id);  // it was generated
    const size_t at = size_t(it - out_ids_.begin());
    if (--out_counts_[at] > 0) continue;
    out_ids_.erase(it);
    out_counts_.erase(out_counts_.begin() + ptrdiff_t(at));
    if (!std::binary_search(prompt_ids_.begin(), prompt_ids_.end(), id))
      seen_.erase(std::lower_bound(seen_.begin(), seen_.end(), id));
  }
  if (p_.temperature != 0.0f) rng_.rewind(uint64_t(ids.size()));
}

void Sampler::accept(int32_t id) {
  if (auto it = std::lower_bound(seen_.begin(), seen_.end(), id); it == seen_.end() || *it != id) seen_.insert(it, id);
  auto it = std::lower_bound(out_ids_.begin(), out_ids_.end(), id);
  const size_t at = size_t(it - out_ids_.begin());
  if (it == out_ids_.end() || *it != id) {
    out_ids_.insert(it, id);
    out_counts_.insert(out_counts_.begin() + ptrdiff_t(at), 0);
  }
  out_counts_[at] += 1;
}

namespace {

// Penalties, then (when sampling) temperature, top-k, top-p and min-p: what sample_token and
// token_distribution share. Greedy: returns the argmax of the penalized logits and n = 0.
// Sampling: idx[0, n) are the kept candidates, best first, and prob[0, n) their weights
// (normalized before the top-p / min-p cuts, so they sum to at most 1); returns -1.
int32_t filter_logits(const SamplingParams& p, std::span<const int32_t> seen, std::span<const int32_t> out_ids,
                      std::span<const int32_t> out_counts, std::span<float> logits, std::vector<int32_t>& idx,
                      std::vector<double>& prob, size_t& n) {
  const int32_t V = int32_t(logits.size());
  n = 0;
  // Penalties first, on raw logits (transformers' and vLLM's order).
  if (p.repetition_penalty != 1.0f) {
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[size_t(id)];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (size_t i = 0; i < out_ids.size(); ++i) {
      const int32_t id = out_ids[i];
      if (id < 0 || id >= V) continue;
      logits[size_t(id)] -= p.presence_penalty + p.frequency_penalty * float(out_counts[i]);
    }
  }
  if (p.temperature == 0.0f) return argmax(logits);
  // Candidates sorted by logit (descending; lower id first on ties), then filtered.
  for (auto& l : logits) l /= p.temperature;
  idx.resize(size_t(V));
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  };
  n = size_t(V);
  if (p.top_k > 0 && size_t(p.top_k) < n) {
    std::partial_sort(idx.begin(), idx.begin() + p.top_k, idx.end(), by_logit);
    n = size_t(p.top_k);
  } else {
    std::sort(idx.begin(), idx.end(), by_logit);
  }
  const float m = logits[size_t(idx[0])];
  prob.resize(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (prob[i] = std::exp(double(logits[size_t(idx[i])] - m)));
  for (size_t i = 0; i < n; ++i) prob[i] /= sum;
  if (p.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i];
      if (cum >= double(p.top_p)) { keep = i + 1; break; }
    }
    n = keep;
  }
  if (p.min_p > 0.0f) {  // drop tokens below min_p * p(max)
    const double cut = double(p.min_p) * prob[0];
    size_t keep = 1;
    while (keep < n && prob[keep] >= cut) ++keep;
    n = keep;
  }
  return -1;
}

}  // namespace

int32_t sample_token(const SamplingParams& p, std::span<const int32_t> seen, std::span<const int32_t> out_ids,
                     std::span<const int32_t> out_counts, double u, std::span<float> logits,
                     std::vector<int32_t>& idx) {
  std::vector<double> prob;
  size_t n = 0;
  if (int32_t g = filter_logits(p, seen, out_ids, out_counts, logits, idx, prob, n); g >= 0) return g;
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  double r = u * total;
  int32_t chosen = idx[n - 1];
  for (size_t i = 0; i < n; ++i) {
    r -= prob[i];
    if (r < 0) { chosen = idx[i]; break; }
  }
  return chosen;
}

void token_distribution(const SamplingParams& p, std::span<const int32_t> seen, std::span<const int32_t> out_ids,
                        std::span<const int32_t> out_counts, std::span<float> logits, std::vector<int32_t>& idx,
                        std::vector<double>& dist) {
  std::vector<double> prob;
  size_t n = 0;
  const int32_t g = filter_logits(p, seen, out_ids, out_counts, logits, idx, prob, n);
  dist.assign(logits.size(), 0.0);
  if (g >= 0) {
    dist[size_t(g)] = 1.0;
    return;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  for (size_t i = 0; i < n; ++i) dist[size_t(idx[i])] = prob[i] / total;
}

int32_t Sampler::sample(std::span<float> logits) {
  // The uniform is drawn first (one per token when temperature > 0, as next_uniform() says):
  // the generator is used nowhere else, so the draws are those of every earlier version.
  const double u = next_uniform();
  const int32_t chosen = sample_token(p_, seen_, out_ids_, out_counts_, u, logits, idx_);
  accept(chosen);
  return chosen;
}

}  // namespace gale
