// Sampling where the logits are: one token per f32 logit row with that row's own penalties,
// temperature, top-k, top-p, min-p and uniform draw, with the semantics of runtime/sampler.cpp
// (Sampler::sample), so that only the chosen ids cross to the host.
//
// Per row, in Sampler::sample's order: repetition penalty over `seen` (l > 0 ? l / rp : l * rp),
// presence / frequency penalties over the output ids (l -= presence + frequency * count), then
// x = l / temperature; candidates in (x descending, id ascending) order; top-k keeps the first
// k; softmax over those; top-p keeps the shortest prefix whose mass reaches top_p; min-p keeps
// the tokens with p >= min_p * p(max); the draw picks by r = u * kept mass. Temperature 0 is
// the argmax of the penalized logits (first maximum), u unused.
//
// A row may carry a token mask (constrained decoding, grammar/grammar.h): bit i % 32 of word
// i / 32 set means token i may be drawn; the others are -inf before anything else looks at the
// row (the host's apply_token_mask then Sampler::sample, as one pass). A row whose mask allows
// nothing gives its argmax over -inf, token 0; the engine's matcher then refuses it.
//
// The kept set is the same as the CPU's; the draw walks the kept tokens in id order (the CPU
// walks them in sorted order), so a given u may pick another token than the CPU, from the same
// distribution. Probabilities are 2^-40 fixed-point masses (exp(x - max) <= 1, rounded), so the
// sums are exact and the pick for a given u is deterministic; tokens below 2^-41 of the
// maximum's mass are never drawn.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

// One row's parameters (runtime/sampler.h's SamplingParams plus the row's draw and lists).
struct SampleRow {
  float temperature = 0.0f;         // >= 0; 0: argmax of the penalized logits
  int32_t top_k = 0;                // >= 0; 0 = off
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t seen_off = 0, n_seen = 0;        // seen_ids[seen_off, +n_seen): distinct prompt + output ids
  int32_t output_off = 0, n_output = 0;    // output_ids / output_counts[output_off, +n_output)
  double u = 0.0;                   // [0, 1): the row's uniform draw (from the sequence's Rng)
  int64_t mask_off = -1;            // masks[mask_off, + ceil(vocab / 32)): the row's token mask; -1: none
};

struct SampleParams {
  float* logits;               // [n, vocab] f32, row stride ld; penalties are applied in place
  int64_t ld, n, vocab;
  const SampleRow* rows;       // [n], device memory
  const int32_t* seen_ids;     // [n_seen_ids]: each row's list distinct (ids outside the vocab are skipped)
  int64_t n_seen_ids;
  const int32_t* output_ids;   // [n_output_ids]: each row's list distinct
  const int32_t* output_counts;  // [n_output_ids]
  int64_t n_output_ids;
  int32_t* out;                // [n]: the chosen id, or -1 where the row's parameters are invalid
  const uint32_t* masks = nullptr;  // [n_mask_words]: the rows' token masks (SampleRow::mask_off)
  int64_t n_mask_words = 0;
};

// Whether a row's mask (if it has one) lies inside the masks of p.
__host__ __device__ inline bool sample_mask_valid(const SampleRow& r, int64_t vocab, int64_t n_mask_words) {
  return r.mask_off < 0 || (r.mask_off <= n_mask_words && (vocab + 31) / 32 <= n_mask_words - r.mask_off);
}

// Whether a row's parameters are in range and its lists lie inside the pools of p (the
// launcher cannot read rows in device memory: callers check them on the host first; the
// kernel checks again and writes -1 for a bad row).
__host__ __device__ inline bool sample_row_valid(const SampleRow& r, int64_t n_seen_ids, int64_t n_output_ids) {
  const float big = 3.40282347e38f;  // FLT_MAX: `<= big` also rejects NaN and infinity
  return r.temperature >= 0.0f && r.temperature <= big && r.top_k >= 0 && r.top_p > 0.0f && r.top_p <= 1.0f &&
         r.min_p >= 0.0f && r.min_p <= 1.0f && r.repetition_penalty > 0.0f && r.repetition_penalty <= big &&
         r.presence_penalty >= -big && r.presence_penalty <= big &&
         r.frequency_penalty >= -big && r.frequency_penalty <= big && r.u >= 0.0 && r.u < 1.0 && r.seen_off >= 0 && r.n_seen >= 0 &&
         int64_t(r.seen_off) + r.n_seen <= n_seen_ids && r.output_off >= 0 && r.n_output >= 0 &&
         int64_t(r.output_off) + r.n_output <= n_output_ids;
}

// Largest vocabulary: the fixed-point masses of a row must sum below 2^63.
constexpr int64_t kSampleMaxVocab = int64_t(1) << 22;

// One block per row; returns cudaErrorInvalidValue for a bad shape or a missing pointer.
cudaError_t sample(const SampleParams& p, cudaStream_t stream);

}  // namespace gale::cuda
