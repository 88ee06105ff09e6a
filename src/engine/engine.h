// The engine: many requests at once. add_request() queues, step() runs one scheduler step
// (continuous batching: decodes and prefill chunks mixed under a token budget, one forward pass),
// samples every sequence with its own parameters, and returns what each request produced.
// The CLI (generate, batch) and the HTTP server all drive this one interface.
// Not thread-safe: one thread calls it (the server wraps it in a loop thread with a queue).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "grammar/grammar.h"
#include "model/transformer.h"
#include "runtime/kv_cache_event.h"
#include "runtime/sampler.h"

namespace gale {

class Tokenizer;
class TokenProposer;

// Proposals per request and step at most (--num-speculative-tokens).
constexpr int64_t kMaxSpeculativeTokens = 16;

// Limits on EngineConfig: KV block ids are int32, and a block of more tokens than this is no
// use to any context (vLLM's largest is 256).
constexpr int64_t kMaxKvBlocks = 2147483647;
constexpr int64_t kMaxBlockSize = 65536;

// Context a request may fill: max_position_embeddings, except for dynamic RoPE (built to run
// past it) and configs without one (0 = no limit).
int64_t context_limit(const ModelConfig& c);

// Tensor parallelism's seam in the engine: rank 0's engine tells the other ranks of its group
// what every step runs, just before it runs it, so that they run the same forward over their
// shards of the model and their own KV caches (engine/step_followers.h sends it over the
// communicator; the other ranks follow with follow_steps). The scheduler, the sampler and the
// tokenizer stay on rank 0: the plan is only block ids, token ids and positions.
class StepFollowers {
 public:
  virtual ~StepFollowers() = default;
  // Once, before the first step: the KV cache every rank makes (blocks, tokens per block).
  virtual void start(int64_t num_blocks, int64_t block_size) = 0;
  // Before each forward: the block copies (src, dst) to make first, then the forward's steps.
  virtual void step(std::span<const std::pair<int32_t, int32_t>> copies, std::span<const SeqStep> steps) = 0;
  // The engine is going away (its KV cache with it).
  virtual void end() = 0;
};

struct EngineConfig {
  int64_t block_size = 16;               // tokens per KV block
  int64_t kv_cache_bytes = 0;            // KV budget (--kv-cache-memory); 0 = default from free memory
  int64_t max_num_seqs = 64;             // sequences running at once (--max-num-seqs)
  int64_t max_num_batched_tokens = 512;  // tokens per forward pass (--max-num-batched-tokens)
  bool prefix_cache = true;              // --no-prefix-cache turns it off
  // The prefix cache's host tier (--host-kv-cache): bytes of host memory (pinned on CUDA) that
  // keep blocks evicted from the device KV cache, copied back on a prefix hit; 0 = none.
  int64_t host_kv_cache_bytes = 0;
  // Launch step N+1 before finishing step N's text and outputs, so the host's work overlaps
  // the device's (engine.cpp says how). GALE_OVERLAP=0 in the environment turns it off for
  // every engine (A/B runs); outputs are the same either way.
  bool overlap = true;
  // Speculative decoding (ARCHITECTURE.md, "Speculative decoding"): up to this many proposed
  // tokens per request and step, verified in one target forward; 0 = off. The proposer is
  // `proposer` when set (model-free: ngram, suffix), else the draft model given to the
  // constructor (one of the two is required when this is > 0, and not both).
  int64_t num_speculative_tokens = 0;
  // true (--num-speculative-tokens auto): k in [0, num_speculative_tokens] chosen per step from
  // the measured acceptance rate, step times and batch size, 0 when it would not pay; false:
  // always num_speculative_tokens (as far as max_tokens leaves room).
  bool speculative_adaptive = true;
  std::shared_ptr<TokenProposer> proposer;
  // Rank 0 of a tensor-parallel group: the other ranks to tell of every step (null: one rank).
  // Not with a draft model.
  StepFollowers* followers = nullptr;
  // The prefix cache's events (blocks stored, removed, cleared), called on the thread that calls
  // step(); null: none. `--kv-events` sets a publisher here (src/kv_events).
  KvCacheEventSink kv_event_sink;
};

struct RequestParams {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  bool ignore_eos = false;
  std::vector<int32_t> eos_ids;     // empty = the model's generation_config eos ids
  std::vector<std::string> stop;    // stop strings: never emitted, honoured across tokens
  int priority = 0;                 // lower runs first (FCFS within a priority)
  int top_logprobs = -1;            // -1: no logprobs; k >= 0: the chosen token's + top k
  bool speculative = true;          // false: never speculates ("speculative": "off" per request)
  bool skip_special_tokens = true;  // false: special tokens stay in the text (Mistral's [TOOL_CALLS])
  // Constrained decoding (src/grammar): the output must match this. The engine compiles it against
  // its tokenizer (cached by text, so repeated schemas compile once); or `grammar`, compiled
  // already, is used instead. Each sampled row is masked on the host before sampling (the
  // device-argmax and device-sampling shortcuts are skipped for the request), speculation is off
  // for it, and it finishes with "stop" once the grammar is complete and eos is sampled (eos is
  // the only token allowed where nothing can follow). Needs an engine with a tokenizer.
  ConstraintSpec constraint;
  std::shared_ptr<const CompiledGrammar> grammar;
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // (id, logprob), best first
};

struct RequestOutput {
  uint64_t id = 0;
  std::vector<int32_t> new_ids;       // tokens produced in this step
  std::string new_text;               // text that became final in this step (stop strings cut)
  std::vector<TokenLogprob> logprobs; // one per new id when asked for
  bool finished = false;
  std::string finish_reason;          // "stop", "length", "abort" or "error" once finished
  std::string error;                  // finish_reason "error": what failed (this request only)
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;      // so far
  int64_t cached_prompt_tokens = 0;   // prompt tokens served from the prefix cache
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_total = 0, kv_blocks_free = 0;
  int64_t kv_blocks_cached = 0;         // held by the prefix cache (free ones are not counted)
  int64_t kv_capacity_tokens = 0;       // tokens the KV cache holds (blocks x block size)
  std::string kv_cache_dtype;           // "f32", "bf16" or "fp8" (model/kv_cache.h kv_cache_dtype_name)
  int64_t prefix_cache_queried_tokens = 0, prefix_cache_hit_tokens = 0;
  // The host tier (--host-kv-cache): prompt tokens brought back from it, its blocks, and the
  // blocks copied out (spilled) and back (loaded) since the start.
  int64_t prefix_cache_host_hit_tokens = 0;
  int64_t kv_host_blocks_total = 0, kv_host_blocks_cached = 0;
  int64_t kv_host_spilled_blocks = 0, kv_host_loaded_blocks = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  int64_t computed_tokens = 0;          // tokens run through the model (prefill, decode, recompute)
  int64_t steps_launched_ahead = 0;     // steps launched before the previous one's outputs (overlap)
  // Speculative decoding: a verify is one request's chunk of proposals in one step.
  int64_t spec_verifies = 0;
  int64_t spec_proposed_tokens = 0, spec_accepted_tokens = 0;
  double spec_proposer_seconds = 0;     // wall time proposing (draft forwards or model-free lookups)
  int64_t spec_k = 0;                   // k chosen for the last step that could speculate
  // KV events (--kv-events): filled by the front end that publishes them, 0 otherwise.
  int64_t kv_events_sent = 0, kv_events_dropped = 0;
  double acceptance_rate() const {      // accepted / proposed (0 before the first verify)
    return spec_proposed_tokens > 0 ? double(spec_accepted_tokens) / double(spec_proposed_tokens) : 0.0;
  }
  double mean_accepted_length() const {  // tokens returned per verify: accepted proposals + the target's token
    return spec_verifies > 0 ? 1.0 + double(spec_accepted_tokens) / double(spec_verifies) : 0.0;
  }
};

class Engine {
 public:
  // draft: a second model beside the target, the proposer of speculative decoding when
  // cfg.num_speculative_tokens > 0 and no model-free proposer is set. It must share the target's vocabulary (tokenizer) and context. It gets a KV cache
  // of its own with the same number of blocks of the same size, indexed by the same block
  // tables: one scheduler, one block pool and one prefix cache serve both, so a block allocated,
  // shared, copied, rolled back or freed is so in both caches, and the KV budget covers a block
  // of each. For that to be sound the draft runs over every token the target runs over: each
  // step's forward is run by the draft too (after the target's launch, synchronously), and
  // draft_logits() keeps its logits where the target sampled. With speculation on, the draft
  // instead runs only when it proposes, first catching up over what it has not seen (so a step
  // that does not speculate does not pay for it), and draft_logits() is empty. It runs k
  // single-token steps per verify before the target's forward, writing its KV at the chunk's
  // positions (the scheduler has allocated their blocks by then); the rejected positions are
  // rolled back with the target's, and rewritten when the sequence gets there again.
  Engine(Transformer& model, const Tokenizer* tok, EngineConfig cfg = {}, Transformer* draft = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates (ids in range, prompt + max_tokens within the context, sampling ranges) and queues;
  // throws gale::Error naming the problem.
  uint64_t add_request(RequestParams p);
  // Frees the request's blocks (after the step in flight, if any); its final output
  // (finish_reason "abort") comes from the next step().
  void abort(uint64_t id);
  // Removes the last n generated tokens of a live request (0 <= n <= tokens it has returned), as
  // if they had never been sampled: its blocks past the remaining tokens are freed, its sampler
  // forgets them (penalties; a seeded generator is rewound, so the continuation draws what the
  // uninterrupted run drew), and its next token is sampled again from the logits after the
  // tokens that remain. Call it between step() calls. With overlap the step launched ahead may
  // hold the request: the rollback then applies when the next step() collects that step, and the
  // token that step sampled for the request is dropped, never returned. completion_tokens counts
  // down accordingly. Throws gale::Error for an unknown or finished id, n out of range, a request
  // whose text is streamed (an engine with a tokenizer: returned text cannot be taken back), and
  // n equal to every generated token of a one-token prompt (the scheduler keeps one token).
  // With speculative decoding a sampled request's generator is not rewound to the plain run's
  // draws (verification draws one or two uniforms per position): the continuation is a valid
  // draw from the same distribution, not the uninterrupted run's tokens.
  void rollback(uint64_t id, int64_t n);
  // Returns what one scheduler step produced. With overlap, it also launches the next step
  // before returning, so a request added now joins the step after that one.
  // Failures do not escape: a request whose own work throws (sampling, detokenization, stop
  // strings) finishes alone with finish_reason "error"; when the forward pass of a step throws,
  // the sequences scheduled in it finish with "error" and the waiting ones run on.
  std::vector<RequestOutput> step();
  // True while a request is queued or running, an output is pending, or a step is in flight.
  bool has_unfinished() const;
  EngineStats stats() const;
  // Drops the prefix cache's unreferenced blocks (after a run: every block is free again).
  void clear_prefix_cache();
  const EngineConfig& config() const;
  // The models and their KV caches: the draft ones are null without a draft.
  const Transformer& model() const;
  const Transformer* draft() const;
  const KVCache& kv_cache() const;
  const KVCache* draft_kv_cache() const;
  // The draft's logits [vocab] at the position the target sampled the request's last returned
  // token from; empty without a draft, before its first token, after a rollback, once finished.
  std::span<const float> draft_logits(uint64_t id) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;  // freed also when the constructor throws (a bad --block-size)
};

}  // namespace gale
