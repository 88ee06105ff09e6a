// Proposers of draft tokens that need no model (speculative decoding, issue 19): they look at a
// request's tokens, and at what earlier requests produced, and guess what comes next. The engine
// verifies the guesses with one forward of the target over them and keeps the longest prefix the
// target agrees with (runtime/ acceptance), so a bad guess costs time, never correctness.
// The draft-model proposer is not one of these: it needs a model and a KV cache, so it lives in
// engine/. Device-free; one proposer serves every request of an engine; not thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace gale {

class TokenProposer {
 public:
  virtual ~TokenProposer() = default;
  // "ngram" or "suffix": the value of --speculative that selects it.
  virtual std::string_view name() const = 0;
  // Appends to `out` (cleared first) up to k tokens guessed to follow `context`: the request's
  // prompt and its output so far, the last token included. Fewer or none when it has no guess
  // worth verifying. `id` names the request: a proposer may keep state per request, knowing that
  // between two calls for one id the context grows by the tokens accepted in between, or shrinks
  // after a rollback (it must check, never assume, which of the two happened).
  virtual void propose(uint64_t id, std::span<const int32_t> context, int64_t k, std::vector<int32_t>& out) = 0;
  // The request finished (or was aborted): drop its state. `context` (prompt + output) may feed
  // later requests' proposals (the suffix proposer's "recent requests").
  virtual void finish(uint64_t id, std::span<const int32_t> context) = 0;
};

// Prompt lookup: the longest n-gram (max_ngram down to min_ngram tokens) that ends the context
// and occurred earlier in it; proposes the tokens that followed its most recent earlier match.
struct NgramProposerConfig {
  int64_t min_ngram = 2;
  int64_t max_ngram = 4;
};
std::unique_ptr<TokenProposer> make_ngram_proposer(NgramProposerConfig cfg = {});

// SuffixDecoding's idea: a suffix tree over each live request's context and over the outputs of
// recent finished requests (bounded by max_cached_tokens, oldest dropped first); proposes the most
// frequent continuation of the longest suffix of the context that the trees hold (up to
// max_match tokens of suffix matched), stopping where the continuation becomes unlikely.
struct SuffixProposerConfig {
  int64_t max_match = 32;              // longest context suffix matched
  int64_t max_cached_tokens = 1 << 20; // tokens of finished requests kept for later ones
  float min_probability = 0.1f;        // stop proposing once the path's estimated probability falls below
};
std::unique_ptr<TokenProposer> make_suffix_proposer(SuffixProposerConfig cfg = {});

}  // namespace gale
