#include "api/tune_pareto.h"

#include <array>

#include "core/error.h"

namespace gale {

TuneObjective parse_tune_objective(const std::string& s) {
  if (s == "throughput") return TuneObjective::Throughput;
  if (s == "latency") return TuneObjective::Latency;
  throw Error("objective must be throughput or latency (got '" + s + "')");
}

const char* tune_objective_name(TuneObjective o) { return o == TuneObjective::Throughput ? "throughput" : "latency"; }

namespace {

// The four figures as costs (lower is better), in the objective's tie-break order.
std::array<double, 4> costs(const TuneMetrics& m, TuneObjective o) {
  if (o == TuneObjective::Throughput) return {-m.tokens_per_s, m.latency_p95_ms, m.memory_bytes, m.quality_loss_pct};
  return {m.latency_p95_ms, -m.tokens_per_s, m.memory_bytes, m.quality_loss_pct};
}

}  // namespace

bool tune_dominates(const TuneMetrics& a, const TuneMetrics& b) {
  const auto ca = costs(a, TuneObjective::Throughput), cb = costs(b, TuneObjective::Throughput);
  bool better = false;
  for (size_t i = 0; i < ca.size(); ++i) {
    if (ca[i] > cb[i]) return false;
    if (ca[i] < cb[i]) better = true;
  }
  return better;
}

std::vector<size_t> pareto_front(std::span<const TuneMetrics> points) {
  std::vector<size_t> front;
  for (size_t i = 0; i < points.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < points.size() && !dominated; ++j) dominated = j != i && tune_dominates(points[j], points[i]);
    if (!dominated) front.push_back(i);
  }
  return front;
}

bool tune_feasible(const TuneMetrics& m, const TuneLimits& limits) {
  if (m.quality_loss_pct > limits.max_quality_loss_pct) return false;
  return limits.memory_limit_bytes <= 0 || m.memory_bytes <= limits.memory_limit_bytes;
}

std::optional<size_t> tune_choose(std::span<const TuneMetrics> points, const TuneLimits& limits, TuneObjective objective) {
  std::optional<size_t> best;
  for (size_t i = 0; i < points.size(); ++i) {
    if (!tune_feasible(points[i], limits)) continue;
    if (!best || costs(points[i], objective) < costs(points[*best], objective)) best = i;  // strict: ties keep the lower index
  }
  return best;
}

}  // namespace gale
