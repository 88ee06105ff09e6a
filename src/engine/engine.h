// The engine: many requests at once. add_request() queues, step() runs one scheduler step
// (continuous batching: decodes and prefill chunks mixed under a token budget, one forward pass),
// samples every sequence with its own parameters, and returns what each request produced.
// The CLI (generate, batch) and the HTTP server all drive this one interface.
// Not thread-safe: one thread calls it (the server wraps it in a loop thread with a queue).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer.h"
#include "runtime/sampler.h"

namespace gale {

class Tokenizer;

struct EngineConfig {
  int64_t block_size = 16;               // tokens per KV block
  int64_t kv_cache_bytes = 0;            // KV budget (--kv-cache-memory); 0 = default from free memory
  int64_t max_num_seqs = 64;             // sequences running at once (--max-num-seqs)
  int64_t max_num_batched_tokens = 512;  // tokens per forward pass (--max-num-batched-tokens)
  bool prefix_cache = true;              // --no-prefix-cache turns it off
  // Launch step N+1 before finishing step N's text and outputs, so the host's work overlaps
  // the device's (engine.cpp says how). GALE_OVERLAP=0 in the environment turns it off for
  // every engine (A/B runs); outputs are the same either way.
  bool overlap = true;
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
  std::string finish_reason;          // "stop", "length" or "abort" once finished
  std::string error;  // finish_reason "error": what failed
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;      // so far
  int64_t cached_prompt_tokens = 0;   // prompt tokens served from the prefix cache
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_total = 0, kv_blocks_free = 0;
  int64_t kv_blocks_cached = 0;         // held by the prefix cache (free ones are not counted)
  int64_t prefix_cache_queried_tokens = 0, prefix_cache_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  int64_t computed_tokens = 0;          // tokens run through the model (prefill, decode, recompute)
  int64_t steps_launched_ahead = 0;     // steps launched before the previous one's outputs (overlap)
};

class Engine {
 public:
  Engine(Transformer& model, const Tokenizer* tok, EngineConfig cfg = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates (ids in range, prompt + max_tokens within the context, sampling ranges) and queues;
  // throws gale::Error naming the problem.
  uint64_t add_request(RequestParams p);
  // Frees the request's blocks (after the step in flight, if any); its final output
  // (finish_reason "abort") comes from the next step().
  void abort(uint64_t id);
  // Returns what one scheduler step produced. With overlap, it also launches the next step
  // before returning, so a request added now joins the step after that one.
  std::vector<RequestOutput> step();
  // True while a request is queued or running, an output is pending, or a step is in flight.
  bool has_unfinished() const;
  EngineStats stats() const;
  // Drops the prefix cache's unreferenced blocks (after a run: every block is free again).
  void clear_prefix_cache();
  const EngineConfig& config() const;

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace gale
