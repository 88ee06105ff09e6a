#include "kernels/ref/moe_ref.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/ref/activation_ref.h"

namespace gale::ref {

void moe_route(const float* logits, int64_t ld, int64_t T, int64_t E, int64_t K, bool norm_topk_prob, int32_t* ids,
               float* weights) {
  std::vector<double> p(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* r = logits + t * ld;
    const double m = *std::max_element(r, r + E);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(double(r[e]) - m));
    for (double& q : p) q /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double top = 0.0;
    for (int64_t k = 0; k < K; ++k) top += p[size_t(order[size_t(k)])];
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = order[size_t(k)];
      ids[t * K + k] = e;
      weights[t * K + k] = float(norm_topk_prob ? p[size_t(e)] / top : p[size_t(e)]);
    }
  }
}

void moe_combine(const float* xn, int64_t ldxn, int64_t T, int64_t hidden, int64_t inter,
                 std::span<const ExpertRef> experts, const int32_t* ids, const float* weights, int64_t K, float* x,
                 int64_t ldx) {
  std::vector<float> y(static_cast<size_t>(hidden));
  std::vector<double> acc(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < hidden; ++i) acc[size_t(i)] = x[t * ldx + i];
    for (int64_t k = 0; k < K; ++k) {
      const ExpertRef& e = experts[size_t(ids[t * K + k])];
      swiglu(xn + t * ldxn, ldxn, 1, hidden, inter, e.gate, e.up, e.down, e.dtype, y.data(), hidden, false);
      for (int64_t i = 0; i < hidden; ++i) acc[size_t(i)] += double(weights[t * K + k]) * double(y[size_t(i)]);
    }
    for (int64_t i = 0; i < hidden; ++i) x[t * ldx + i] = float(acc[size_t(i)]);
  }
}

}  // namespace gale::ref
