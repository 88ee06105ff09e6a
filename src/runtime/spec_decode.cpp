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

double SpecController::step_seconds(double tokens) const {
  // Too few or too alike observations for a slope: assume a step costs as much again per 16
  // extra tokens (memory-bound decoding on either device), so speculation can start and measure.
  if (sw_ <= 0) return 0;
  const double mt = st_ / sw_, my = sy_ / sw_;
  const double var = stt_ / sw_ - mt * mt;
  double b = var > 0.25 ? (sty_ / sw_ - mt * my) / var : my / (mt + 16.0);
  b = std::max(b, 0.0);
  const double a = std::max(my - b * mt, 1e-7);
  return a + b * tokens;
}

double SpecController::rate(int64_t batch, int64_t k) const {
  const double B = double(std::max<int64_t>(batch, 1));
  if (k == 0) return 1.0 / std::max(step_seconds(B), 1e-9);
  const double a = std::clamp(alpha_, 0.0, 0.999);
  const double expected = (1.0 - std::pow(a, double(k + 1))) / (1.0 - a);  // accepted + the bonus
  const double t = step_seconds(B * double(1 + k)) + double(k) * (have_round_ ? round_seconds_ : 0.0);
  return expected / std::max(t, 1e-9);
}

int64_t SpecController::choose_k(int64_t batch) {
  if (cfg_.k_max == 0) return 0;
  if (!cfg_.adaptive) return cfg_.k_max;
  if (sw_ <= 0) return cfg_.k_max;  // nothing measured yet: try
  const double base = rate(batch, 0);
  int64_t best = 0;
  double best_rate = base * cfg_.min_gain;
  for (int64_t k = 1; k <= cfg_.k_max; ++k)
    if (double r = rate(batch, k); r > best_rate) best = k, best_rate = r;
  if (best > 0) {
    off_steps_ = 0;
    return best;
  }
  if (++off_steps_ >= cfg_.probe_every) {  // probe: the acceptance may have changed
    off_steps_ = 0;
    return 1;
  }
  return 0;
}

void SpecController::observe_verify(int64_t proposed, int64_t accepted) {
  if (proposed <= 0) return;
  // Per proposed token, weighted by how many were proposed; ~50 proposals of memory.
  const double w = std::min(1.0, double(proposed) / 50.0);
  alpha_ = (1 - w) * alpha_ + w * double(accepted) / double(proposed);
}

void SpecController::observe_step(int64_t tokens, double seconds, int64_t rounds, double proposer_seconds) {
  if (tokens <= 0 || !(seconds >= 0)) return;
  const double decay = 0.98;  // ~50 steps of memory: follows a change of load
  sw_ *= decay, st_ *= decay, stt_ *= decay, sy_ *= decay, sty_ *= decay;
  const double T = double(tokens);
  sw_ += 1, st_ += T, stt_ += T * T, sy_ += seconds, sty_ += T * seconds;
  if (rounds > 0) {
    const double per = proposer_seconds / double(rounds);
    round_seconds_ = have_round_ ? 0.9 * round_seconds_ + 0.1 * per : per;
    have_round_ = true;
  }
}

}  // namespace gale
