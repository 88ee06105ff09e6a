// Scalar reference for the sampling filters (runtime/sampler.cpp sample_token on the host,
// kernels/cuda/sample.cu on the GPU): penalties, temperature, top-k, top-p, min-p, and which
// token a uniform draw picks. The specification their tests compare against; it returns the
// kept set with its probabilities, so a test can check the set, the distribution and the pick.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace gale::ref {

struct SamplingSpec {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;
};

// In place on logits [V], in this order: the repetition penalty once per distinct id of `seen`
// (l > 0 ? l / r : l * r), then l -= presence + frequency * count for each output id. Ids
// outside [0, V) are skipped.
void apply_penalties(float* logits, int64_t V, const SamplingSpec& s, std::span<const int32_t> seen,
                     std::span<const int32_t> output_ids, std::span<const int32_t> output_counts);

struct KeptToken {
  int32_t id;
  double p;  // probability among the kept tokens (they sum to 1)
};

// The tokens a draw may pick from penalized logits [V] (temperature > 0), in sampling order
// (x = l / temperature descending, lower id first on ties): the first top_k of them; softmax
// over those; the shortest prefix whose mass reaches top_p; of those, the ones with
// p >= min_p * p(first). Probabilities in double, renormalized over the kept set.
std::vector<KeptToken> sampling_filter(const float* logits, int64_t V, const SamplingSpec& s);

// Where u in [0, 1) falls when `kept` is laid out on [0, 1) in the given order: the token whose
// cumulative interval [lo, hi) holds u (the last one when rounding leaves u past the end).
struct Pick {
  int32_t id;
  double lo, hi;
};
Pick pick(std::span<const KeptToken> kept, double u);

// kept sorted by id (the order the GPU kernel draws in).
std::vector<KeptToken> by_id(std::span<const KeptToken> kept);

// Index of the largest of x[0..n), the first on ties (torch.argmax; greedy decoding).
int32_t argmax(const float* x, int64_t n);

}  // namespace gale::ref
