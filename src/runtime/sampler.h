// Turning logits into the next token: penalties, temperature, top-k, top-p, min-p and a
// seeded random draw. Device-free; one Sampler per sequence.
#pragma once
#include <cstdint>
#include <span>
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
  // Undoes the last n draws (splitmix64's state advances by a constant per draw).
  void rewind(uint64_t n);

 private:
  uint64_t s_;
};

class Sampler {
 public:
  Sampler(const SamplingParams& p, std::span<const int32_t> prompt);
  // Picks the next id from logits [vocab] (modified in place) and records it as generated.
  int32_t sample(std::span<float> logits);
  void accept(int32_t id);  // record an id chosen elsewhere (e.g. forced)
  // Forgets the last ids.size() generated ids (`ids`: those ids), as if they had never been
  // generated: the penalty lists drop them and, when sampling (temperature > 0), the generator
  // is rewound by one draw each (each came from sample() or from next_uniform() + accept()), so
  // the tokens sampled next get the uniforms they had.
  void rollback(std::span<const int32_t> ids);
  // Plain greedy (temperature 0, no penalties): the choice is the logits' argmax, which the
  // engine may take from the device without copying the logits out.
  bool plain_greedy() const {
    return p_.temperature == 0.0f && p_.repetition_penalty == 1.0f && p_.presence_penalty == 0.0f &&
           p_.frequency_penalty == 0.0f;
  }

  // What sample() would apply to the next logits, for a device that samples in its place (the
  // engine hands these to Backend::sample_rows, then accept()s the device's choice).
  const SamplingParams& params() const { return p_; }
  std::span<const int32_t> seen_ids() const { return seen_; }             // distinct prompt + output ids, ascending
  std::span<const int32_t> output_ids() const { return out_ids_; }        // distinct output ids, ascending
  std::span<const int32_t> output_counts() const { return out_counts_; }  // times each was generated
  // The uniform sample() would draw for the next token: one per token when temperature > 0,
  // none (returns 0) when greedy, so the generator advances exactly as on the host path.
  double next_uniform() { return p_.temperature == 0.0f ? 0.0 : rng_.uniform(); }

 private:
  SamplingParams p_;
  Rng rng_;
  // Kept sorted and distinct as ids arrive (each penalty applies once per id), so neither path
  // sorts the prompt again every token.
  std::vector<int32_t> seen_;        // prompt + output ids, for repetition penalty
  std::vector<int32_t> prompt_ids_;  // distinct prompt ids, ascending (rollback keeps them seen)
  std::vector<int32_t> out_ids_;     // output ids, for presence/frequency
  std::vector<int32_t> out_counts_;  // their counts
  std::vector<int32_t> idx_;         // scratch
};

// What Sampler::sample does to one row of logits [vocab] (modified in place) with the sequence's
// penalty lists and the uniform u in [0, 1) its generator drew (ignored when greedy); idx is
// scratch. A host stand-in for Backend::sample_rows calls it with a RowSampling's fields.
int32_t sample_token(const SamplingParams& p, std::span<const int32_t> seen, std::span<const int32_t> out_ids,
                     std::span<const int32_t> out_counts, double u, std::span<float> logits,
                     std::vector<int32_t>& idx);

// The distribution sample_token draws from, dense over the vocabulary: dist[id] = probability
// of id after penalties, temperature, top-k, top-p and min-p (renormalized); greedy: 1 at the
// argmax of the penalized logits. logits are modified in place as by sample_token. Speculative
// decoding's acceptance (runtime/spec_decode.h) compares it with the proposer's.
void token_distribution(const SamplingParams& p, std::span<const int32_t> seen, std::span<const int32_t> out_ids,
                        std::span<const int32_t> out_counts, std::span<float> logits, std::vector<int32_t>& idx,
                        std::vector<double>& dist);

// Index of the largest value; the first one on ties (as torch.argmax).
int32_t argmax(std::span<const float> v);

}  // namespace gale
