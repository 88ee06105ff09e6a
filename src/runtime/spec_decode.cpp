#include "runtime/spec_decode.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace gale {

namespace {

// Draws from the unnormalized weights w (ascending ids) with the uniform u; the last positive
// weight when rounding leaves u * total unspent.
int32_t draw(const std::vector<double>& w, double total, double u) {
  double r = u * total;
  int32_t last = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0) continue;
    last = int32_t(i);
    r -= w[i];
    if (r < 0) return int32_t(i);
  }
  GALE_ASSERT(last >= 0);
  return last;
}

}  // namespace

int32_t verify_token(Sampler& s, std::span<float> logits, int32_t proposal, std::span<const float> q, bool* accepted) {
  *accepted = false;
  const SamplingParams& p = s.params();
  if (proposal < 0 || p.temperature == 0.0f) {
    // Greedy, or the bonus token: exactly what Sampler::sample returns (it draws the uniform
    // when sampling, none when greedy).
    const int32_t t = s.sample(logits);
    *accepted = proposal >= 0 && t == proposal;
    return t;
  }
  GALE_ASSERT(size_t(proposal) < logits.size());
  GALE_ASSERT(q.empty() || q.size() == logits.size());
  static thread_local std::vector<int32_t> idx;
  static thread_local std::vector<double> dist;
  token_distribution(p, s.seen_ids(), s.output_ids(), s.output_counts(), logits, idx, dist);
  const double px = dist[size_t(proposal)];
  const double qx = q.empty() ? 1.0 : double(q[size_t(proposal)]);
  const double u = s.next_uniform();
  // u < p/q, written without the division; q(x) = 0 (a proposal q could not have drawn) rejects.
  if (qx > 0 && u * qx < px) {
    *accepted = true;
    s.accept(proposal);
    return proposal;
  }
  double total = 0;
  if (q.empty()) {
    dist[size_t(proposal)] = 0;
  } else {
    for (size_t i = 0; i < dist.size(); ++i) dist[i] = std::max(0.0, dist[i] - double(q[i]));
  }
  for (double v : dist) total += v;
  if (!(total > 0)) {
    // p <= q everywhere, so p = q and the acceptance probability was 1: reached only through
    // rounding. Any draw from p is right; redo the distribution.
    token_distribution(p, s.seen_ids(), s.output_ids(), s.output_counts(), logits, idx, dist);
    total = 1;
  }
  const int32_t t = draw(dist, total, s.next_uniform());
  s.accept(t);
  return t;
}

SpecController::SpecController(SpecControllerConfig cfg) : cfg_(cfg) {
  if (cfg_.k_max < 0) throw Error("the number of speculative tokens must be >= 0");
}

namespace {

// A table of moving averages by key: the exact entry, else interpolated between the nearest
// keys, else (above them all) in proportion to the largest, else (below them all) the smallest.
double lookup(const std::map<int64_t, double>& t, int64_t key) {
  if (t.empty()) return 0;
  auto hi = t.lower_bound(key);
  if (hi != t.end() && hi->first == key) return hi->second;
  if (hi == t.begin()) return hi->second;
  auto lo = std::prev(hi);
  if (hi == t.end()) return lo->second * double(key) / double(lo->first);
  const double f = double(key - lo->first) / double(hi->first - lo->first);
  return lo->second + f * (hi->second - lo->second);
}

void update(std::map<int64_t, double>& t, int64_t key, double v) {
  auto [it, fresh] = t.emplace(key, v);
  if (!fresh) it->second = 0.8 * it->second + 0.2 * v;  // ~5 observations of memory: follows the load
}

}  // namespace

double SpecController::step_seconds(int64_t tokens) const { return lookup(step_, tokens); }

double SpecController::round_seconds(int64_t batch) const { return lookup(round_, batch); }

double SpecController::rate(int64_t batch, int64_t k) const {
  const int64_t B = std::max<int64_t>(batch, 1);
  if (k == 0) return double(B) / std::max(step_seconds(B), 1e-9);
  const double a = std::clamp(alpha_, 0.0, 0.999);
  const double expected = (1.0 - std::pow(a, double(k + 1))) / (1.0 - a);  // accepted + the target's token
  const double t = step_seconds(B * (1 + k)) + double(k) * round_seconds(B);
  return double(B) * expected / std::max(t, 1e-9);
}

int64_t SpecController::choose_k(int64_t batch) {
  probing_ = false;
  if (cfg_.k_max == 0) return 0;
  if (!cfg_.adaptive) return cfg_.k_max;
  const int64_t B = std::max<int64_t>(batch, 1);
  // Sizes between two measured ones are interpolated; outside them they would be guessed.
  auto known = [&](int64_t t) { return !step_.empty() && t <= step_.rbegin()->first; };
  // A plain step of this batch (or a smaller one) must have been measured: a table of prefill
  // steps alone says nothing of what a decode costs.
  if (step_.empty() || step_.begin()->first > B || !known(B)) return 0;
  for (int64_t k = 1; k <= cfg_.k_max; ++k)  // an unknown verify size is tried once, so it is measured
    if (!known(B * (1 + k)) && tried_.insert(B * (1 + k)).second) return k;
  const double base = rate(B, 0);
  int64_t best = 0;
  double best_rate = base * cfg_.min_gain;
  for (int64_t k = 1; k <= cfg_.k_max; ++k)
    if (double r = rate(B, k); r > best_rate) best = k, best_rate = r;
  if (best > 0) {
    off_steps_ = 0;
    if (++on_steps_ >= cfg_.refresh_every) {  // a plain step: t(batch) is measured again
      on_steps_ = 0;
      return 0;
    }
    return best;
  }
  if (++off_steps_ >= cfg_.probe_every) {  // probe: the acceptance may have changed
    off_steps_ = 0;
    probing_ = true;
    return 1;
  }
  return 0;
}

void SpecController::observe_verify(int64_t proposed, int64_t accepted) {
  if (proposed <= 0) return;
  // Each judged position is one trial of a geometric run: the accepted ones, and the rejected
  // one that ended the verify early. ~50 trials of memory.
  const int64_t trials = accepted + (accepted < proposed ? 1 : 0);
  if (trials == 0) return;
  const double w = std::min(1.0, double(trials) / 50.0);
  alpha_ = (1 - w) * alpha_ + w * double(accepted) / double(trials);
}

void SpecController::observe_step(int64_t tokens, double seconds) {
  if (tokens <= 0 || !(seconds >= 0)) return;
  update(step_, tokens, seconds);
}

void SpecController::observe_proposer(int64_t batch, int64_t rounds, double seconds) {
  if (batch <= 0 || rounds <= 0 || !(seconds >= 0)) return;
  update(round_, batch, seconds / double(rounds));
}

}  // namespace gale
