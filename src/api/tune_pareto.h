// `gale tune`'s choice among measured configurations: Pareto dominance over four costs and the
// pick that respects the user's limits. Plain values only, so the rule is tested by hand-computed
// cases (tests/unit/tune_pareto_test.cpp) apart from any measurement.
#pragma once
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace gale {

// What one configuration measured. Lower is better for every field but tokens_per_s.
struct TuneMetrics {
  double quality_loss_pct = 0;  // perplexity increase over the unmodified model, in percent
  double tokens_per_s = 0;      // output tokens per second on the workload
  double latency_p95_ms = 0;    // 95th percentile of the requests' end-to-end latency
  double memory_bytes = 0;      // weights (target and draft) + the KV caches the engine reserved
};

// Which figure the choice maximizes first: throughput (batch workloads) or p95 latency (chat).
enum class TuneObjective { Throughput, Latency };
TuneObjective parse_tune_objective(const std::string& s);  // "throughput" or "latency"
const char* tune_objective_name(TuneObjective o);

// a dominates b: a is no worse than b in all four figures and better in at least one.
bool tune_dominates(const TuneMetrics& a, const TuneMetrics& b);

// Indices of the points no other point dominates, ascending. Equal points do not dominate each
// other, so duplicates are all on the front.
std::vector<size_t> pareto_front(std::span<const TuneMetrics> points);

struct TuneLimits {
  double max_quality_loss_pct = 5.0;  // --max-quality-loss
  double memory_limit_bytes = 0;      // --memory-limit; 0 = none
};

// A point within the limits.
bool tune_feasible(const TuneMetrics& m, const TuneLimits& limits);

// The feasible point that is best by the objective, ties broken by the other figures in a fixed
// order (throughput: latency, memory, quality loss; latency: throughput, memory, quality loss),
// then by the lower index. Such a lexicographic best is never dominated by any point, feasible or
// not (a point that dominated it would be within the limits too, and ahead in that order).
// nullopt when no point is within the limits.
std::optional<size_t> tune_choose(std::span<const TuneMetrics> points, const TuneLimits& limits, TuneObjective objective);

}  // namespace gale
