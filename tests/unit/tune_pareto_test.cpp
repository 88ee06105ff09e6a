// gale tune's Pareto front and choice (api/tune_pareto.h) on hand-computed cases.
#include <gtest/gtest.h>

#include <random>

#include "api/tune_pareto.h"
#include "core/error.h"

using gale::TuneLimits;
using gale::TuneMetrics;
using gale::TuneObjective;

namespace {

// {quality loss %, tok/s, p95 ms, bytes}
const std::vector<TuneMetrics> kPoints = {
    {0.0, 100, 500, 100},  // 0 A: the unmodified model
    {1.0, 150, 400, 80},   // 1 B: better than A in speed and memory, worse in quality
    {2.0, 140, 450, 90},   // 2 C: B is better in all four -> dominated
    {6.0, 300, 200, 50},   // 3 D: fastest and smallest, but loses 6 %
    {0.0, 100, 500, 100},  // 4 E: equal to A (equal points do not dominate each other)
};

}  // namespace

TEST(TunePareto, Dominance) {
  EXPECT_TRUE(gale::tune_dominates(kPoints[1], kPoints[2]));
  EXPECT_FALSE(gale::tune_dominates(kPoints[2], kPoints[1]));
  EXPECT_FALSE(gale::tune_dominates(kPoints[0], kPoints[4]));  // equal
  EXPECT_FALSE(gale::tune_dominates(kPoints[0], kPoints[1]));  // better quality, worse speed: neither
  EXPECT_FALSE(gale::tune_dominates(kPoints[1], kPoints[0]));
  // One figure better, the rest equal, is enough.
  EXPECT_TRUE(gale::tune_dominates({1.0, 150, 400, 79}, kPoints[1]));
  EXPECT_TRUE(gale::tune_dominates({1.0, 151, 400, 80}, kPoints[1]));
  EXPECT_TRUE(gale::tune_dominates({1.0, 150, 399, 80}, kPoints[1]));
  EXPECT_TRUE(gale::tune_dominates({0.9, 150, 400, 80}, kPoints[1]));
  EXPECT_FALSE(gale::tune_dominates({0.9, 150, 401, 80}, kPoints[1]));
}

TEST(TunePareto, Front) {
  EXPECT_EQ(gale::pareto_front(kPoints), (std::vector<size_t>{0, 1, 3, 4}));
  EXPECT_TRUE(gale::pareto_front(std::vector<TuneMetrics>{}).empty());
  // A chain where each point dominates the next: only the first is on the front.
  const std::vector<TuneMetrics> chain = {{0, 30, 10, 10}, {1, 20, 20, 20}, {2, 10, 30, 30}};
  EXPECT_EQ(gale::pareto_front(chain), (std::vector<size_t>{0}));
}

TEST(TunePareto, ChooseRespectsLimits) {
  const TuneLimits five{5.0, 0};
  EXPECT_EQ(gale::tune_choose(kPoints, five, TuneObjective::Throughput), 1u);  // B: 150 tok/s; D is over 5 %
  EXPECT_EQ(gale::tune_choose(kPoints, five, TuneObjective::Latency), 1u);     // B: 400 ms
  EXPECT_EQ(gale::tune_choose(kPoints, TuneLimits{10.0, 0}, TuneObjective::Throughput), 3u);  // D allowed
  // Only A and E within 0.5 %: equal in everything, the first wins.
  EXPECT_EQ(gale::tune_choose(kPoints, TuneLimits{0.5, 0}, TuneObjective::Throughput), 0u);
  // Memory: at most 85 bytes leaves B (80) among those within 5 %.
  EXPECT_EQ(gale::tune_choose(kPoints, TuneLimits{5.0, 85}, TuneObjective::Throughput), 1u);
  EXPECT_EQ(gale::tune_choose(kPoints, TuneLimits{5.0, 60}, TuneObjective::Throughput), std::nullopt);
  EXPECT_FALSE(gale::tune_feasible({5.01, 1, 1, 1}, five));
  EXPECT_TRUE(gale::tune_feasible({5.0, 1, 1, 1}, five));
  EXPECT_TRUE(gale::tune_feasible({-1.0, 1, 1, 1e18}, five));  // no memory limit
}

TEST(TunePareto, ChooseBreaksTiesByTheOtherFigures) {
  // Same throughput: the lower p95 latency wins, even with more memory.
  const std::vector<TuneMetrics> a = {{0, 200, 300, 100}, {0, 200, 250, 120}};
  EXPECT_EQ(gale::tune_choose(a, TuneLimits{}, TuneObjective::Throughput), 1u);
  // Same throughput and latency: the smaller memory wins over the better quality.
  const std::vector<TuneMetrics> b = {{0, 200, 300, 100}, {1, 200, 300, 90}};
  EXPECT_EQ(gale::tune_choose(b, TuneLimits{}, TuneObjective::Throughput), 1u);
  // Latency first: 250 ms beats 300 ms at any throughput.
  const std::vector<TuneMetrics> c = {{0, 400, 300, 100}, {0, 100, 250, 100}};
  EXPECT_EQ(gale::tune_choose(c, TuneLimits{}, TuneObjective::Latency), 1u);
  EXPECT_EQ(gale::tune_choose(c, TuneLimits{}, TuneObjective::Throughput), 0u);
}

TEST(TunePareto, ChoiceIsNeverDominated) {
  std::mt19937 rng(20261207);
  std::uniform_int_distribution<int> d(0, 4);  // few distinct values: many ties
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<TuneMetrics> pts(8);
    for (auto& p : pts) p = {double(d(rng)), double(d(rng)), double(d(rng)), double(d(rng))};
    for (auto obj : {TuneObjective::Throughput, TuneObjective::Latency}) {
      const TuneLimits lim{2.0, 3.0};
      auto c = gale::tune_choose(pts, lim, obj);
      if (!c) {
        for (const auto& p : pts) EXPECT_FALSE(p.quality_loss_pct <= 2.0 && p.memory_bytes <= 3.0);
        continue;
      }
      EXPECT_LE(pts[*c].quality_loss_pct, 2.0);
      EXPECT_LE(pts[*c].memory_bytes, 3.0);
      for (const auto& p : pts) EXPECT_FALSE(gale::tune_dominates(p, pts[*c]));
    }
  }
}

TEST(TunePareto, ObjectiveNames) {
  EXPECT_EQ(gale::parse_tune_objective("latency"), TuneObjective::Latency);
  EXPECT_STREQ(gale::tune_objective_name(TuneObjective::Throughput), "throughput");
  EXPECT_THROW(gale::parse_tune_objective("speed"), gale::Error);
}
