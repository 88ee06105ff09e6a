#include "kernels/ref/sampling_ref.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace gale::ref {

void apply_penalties(float* logits, int64_t V, const SamplingSpec& s, std::span<const int32_t> seen,
                     std::span<const int32_t> output_ids, std::span<const int32_t> output_counts) {
  if (s.repetition_penalty != 1.0f)
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[id];
      l = l > 0.0f ? l / s.repetition_penalty : l * s.repetition_penalty;
    }
  for (size_t i = 0; i < output_ids.size(); ++i) {
    const int32_t id = output_ids[i];
    if (id < 0 || id >= V) continue;
    logits[id] -= s.presence_penalty + s.frequency_penalty * float(output_counts[i]);
  }
}

std::vector<KeptToken> sampling_filter(const float* logits, int64_t V, const SamplingSpec& s) {
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::vector<double> x(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) x[size_t(i)] = double(logits[i]) / double(s.temperature);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[size_t(a)] > x[size_t(b)]; });
  size_t n = size_t(V);
  if (s.top_k > 0) n = std::min(n, size_t(s.top_k));
  std::vector<double> p(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += (p[i] = std::exp(x[size_t(order[i])] - x[size_t(order[0])]));
  for (double& q : p) q /= sum;
  if (s.top_p < 1.0f) {
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i)
      if ((cum += p[i]) >= double(s.top_p)) {
        keep = i + 1;
        break;
      }
    n = keep;
  }
  if (s.min_p > 0.0f) {
    size_t keep = 1;
    while (keep < n && p[keep] >= double(s.min_p) * p[0]) ++keep;
    n = keep;
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  std::vector<KeptToken> kept(n);
  for (size_t i = 0; i < n; ++i) kept[i] = {order[i], p[i] / total};
  return kept;
}

Pick pick(std::span<const KeptToken> kept, double u) {
  double lo = 0.0;
  for (size_t i = 0; i < kept.size(); ++i) {
    const double hi = lo + kept[i].p;
    if (u < hi || i + 1 == kept.size()) return {kept[i].id, lo, hi};
    lo = hi;
  }
  return {-1, 0.0, 0.0};
}

std::vector<KeptToken> by_id(std::span<const KeptToken> kept) {
  std::vector<KeptToken> v(kept.begin(), kept.end());
  std::sort(v.begin(), v.end(), [](const KeptToken& a, const KeptToken& b) { return a.id < b.id; });
  return v;
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

}  // namespace gale::ref
