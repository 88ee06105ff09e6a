// Speculative decoding's device-free half (issue 19): the acceptance of proposed tokens against
// the target's logits, and the choice of how many tokens to propose (k) per step.
//
// A verify step runs the target once over a request's last accepted token and its k proposals
// (a chunk of 1 + k tokens), giving logits at each of the 1 + k positions. verify_token() is then
// called position by position: at position i < k it accepts proposal i or replaces it (and the
// chunk ends there); at position k (all accepted) it samples the bonus token. The rule is the
// standard speculative-sampling one (Leviathan et al. 2023; Chen et al. 2023), so the tokens
// returned are distributed exactly as the target's sampler would draw them one at a time:
//   greedy (temperature 0): the target's token is the argmax of its penalized logits; the
//     proposal is accepted iff it equals it (so the output is token for token the plain run's);
//   sampling: with p the target's distribution (penalties, temperature, top-k/top-p/min-p, as
//     Sampler::sample) and q the proposer's, accept x with probability min(1, p(x) / q(x)); on
//     rejection draw from normalize(max(0, p - q)). A model-free proposer's q is a point mass at
//     x: accept with probability p(x), on rejection draw from p with x removed.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <vector>

#include "runtime/sampler.h"

namespace gale {

// One position of a verify chunk. logits: the target's row [vocab] there (modified in place).
// proposal: the proposed token, or -1 at the bonus position (plain Sampler::sample). q: the
// proposer's distribution [vocab] at this position (the one the proposal was drawn from); empty
// for a point mass at the proposal. The sampler's penalty lists must hold the chunk's earlier
// accepted tokens (they do: each returned token is accept()ed here). Returns the token; *accepted
// tells whether it is the proposal. Draws one uniform (two on a rejection) from the sampler's
// generator when sampling, none when greedy.
int32_t verify_token(Sampler& s, std::span<float> logits, int32_t proposal, std::span<const float> q, bool* accepted);

// How many tokens to propose per step, from what the engine measured: the acceptance rate of
// the proposals verified so far, the wall time of target steps by the tokens they ran, and the
// proposer's time per round by the requests it served. "Never a loss": k is the one that
// maximizes the expected tokens per second at the step's batch size, and 0 (speculation off)
// unless that beats plain decoding by a margin. Step times are kept per token count (a table of
// moving averages, not a fitted line: on the CPU a step of 5 tokens costs twice one of 1, then
// grows slowly, a shape no line follows); a count never measured is interpolated between the
// nearest measured ones, or extrapolated in proportion (pessimistically) above them. A verify
// size above every measured one is tried once before it is judged (batch sizes that come and go
// as requests finish are interpolated, not explored), while off it probes now and then (k = 1),
// and while on it decodes plainly now and then, so the baseline it compares with stays measured.
struct SpecControllerConfig {
  int64_t k_max = 4;          // proposals per request and step at most
  bool adaptive = true;       // false: always k_max (--num-speculative-tokens K)
  double min_gain = 1.03;     // expected speed-up below which speculation stays off
  int64_t probe_every = 64;   // steps off between two probes
  int64_t refresh_every = 16; // steps on between two plain steps (the baseline is re-measured)
};

class SpecController {
 public:
  explicit SpecController(SpecControllerConfig cfg);
  // k for a step in which `batch` requests decode (each would verify 1 + k tokens).
  int64_t choose_k(int64_t batch);
  // The last choose_k() was a probe of the acceptance while off: one request verifying is enough
  // (a probe of the whole batch would cost a verify step, and the draft's catch-up, for all).
  bool probing() const { return probing_; }
  // A request's verify: `proposed` tokens were proposed, the first `accepted` were taken.
  void observe_verify(int64_t proposed, int64_t accepted);
  // A target step of `tokens` batched tokens took `seconds` (launch to ids).
  void observe_step(int64_t tokens, double seconds);
  // The proposer served `batch` requests with `rounds` rounds in `seconds`.
  void observe_proposer(int64_t batch, int64_t rounds, double seconds);
  // Estimated probability that a proposal is accepted given the ones before it were.
  double acceptance() const { return alpha_; }
  // Expected seconds of a target step of `tokens` tokens (0 before any was measured).
  double step_seconds(int64_t tokens) const;
  // Expected output tokens per second of the step with k proposals per request (k = 0: plain).
  double rate(int64_t batch, int64_t k) const;
  const SpecControllerConfig& config() const { return cfg_; }

 private:
  double round_seconds(int64_t batch) const;

  SpecControllerConfig cfg_;
  double alpha_ = 0.6;  // prior before the first verify
  std::map<int64_t, double> step_;   // moving average of a step's seconds by its token count
  std::map<int64_t, double> round_;  // moving average of one proposer round's seconds by its batch
  std::set<int64_t> tried_;          // verify sizes (tokens) already given their one try
  int64_t off_steps_ = 0, on_steps_ = 0;
  bool probing_ = false;
};

}  // namespace gale
