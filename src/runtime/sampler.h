// Turning logits into the next token: penalties, temperature, top-k, top-p, min-p and a
// seeded random draw. Device-free; one Sampler per sequence.
#pragma once
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace gale {

struct SamplingParams {
  float temperature = 0.0f;  // 0 (or do_sample false) = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;  // HF style, over prompt and output tokens
  float presence_penalty = 0.0f;    // OpenAI style, over output tokens
  float frequency_penalty = 0.0f;   // OpenAI style, over output tokens
  uint64_t seed = 0;
};

// Checks ranges; throws gale::Error naming the bad parameter.
void validate(const SamplingParams& p);

// Small deterministic generator (splitmix64): the same seed gives the same draws everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next();
  double uniform();  // [0, 1) with 53 random bits

 private:
  uint64_t s_;
};

class Sampler {
 public:
  Sampler(const SamplingParams& p, std::span<const int32_t> prompt);
  // Picks the next id from logits [vocab] (modified in place) and records it as generated.
  int32_t sample(std::span<float> logits);
  void accept(int32_t id);  // record an id chosen elsewhere (e.g. forced)
  // Plain greedy (temperature 0, no penalties): the choice is the logits' argmax, which the
  // engine may take from the device without copying the logits out.
  bool plain_greedy() const {
    return p_.temperature == 0.0f && p_.repetition_penalty == 1.0f && p_.presence_penalty == 0.0f &&
           p_.frequency_penalty == 0.0f;
  }

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<int32_t> seen_;                     // prompt + output ids, for repetition penalty
  std::unordered_map<int32_t, int32_t> counts_;   // output id -> count, for presence/frequency
  std::vector<int32_t> idx_;                      // scratch
};

// Index of the largest value; the first one on ties (as torch.argmax).
int32_t argmax(std::span<const float> v);

}  // namespace gale
