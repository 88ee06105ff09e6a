// The in-process API: one C++ facade over model loading, the tokenizer, the chat template and the
// continuous-batching Engine, for the bindings that sit on it (the C API, include/gale.h and
// bindings/c; the Python module `gale`, bindings/python). vLLM's LLM(...).generate() shape:
//
//   LLMOptions o;  o.model.model = "models/default";  o.set("max_num_seqs", "8");
//   LLM llm(o);
//   std::vector<Completion> out = llm.generate({llm.encode("def f(x):")}, {GenerationParams{}});
//
// generate() queues every prompt at once and steps the Engine until all have finished, so N
// prompts share each forward pass (the same path as `gale batch` and the server). For streaming,
// submit() queues one request and next() returns what it produced since the last call (running
// engine steps until it has something); any number of requests may be in flight, and a step
// advances them all: what belongs to another request waits in its own queue for its next().
//
// Thread-safe: one lock serializes every call (the Engine is single-threaded). Callbacks run
// under that lock on the calling thread; they may call this LLM again (the lock is recursive).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "api/engine_args.h"
#include "core/error.h"
#include "engine/engine.h"

namespace gale {

// The caller's mistake (an unknown engine argument or a bad value, a sampling parameter out of
// range, an empty or too long prompt, an unknown request id): ValueError in Python,
// GALE_ERR_INVALID_ARGUMENT in C. Everything else (files, loading, the engine) is a gale::Error.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

struct LLMOptions {
  ModelOptions model;    // model.model: the folder ("" = the bundled default model)
  EngineOptions engine;
  // A Jinja chat template for chat(): the text itself when it holds "{{" or "{%", else a file to
  // read; "" = the model's own (chat_template.jinja / tokenizer_config.json), when it has one.
  std::string chat_template;

  // Sets one engine argument from its text, by vLLM's name where one fits (LLM(**engine_args)):
  // device, dtype, threads, gpu_memory_utilization, quantization, quantization_group,
  // quantize_lm_head, keep_16bit (comma-separated), kv_cache_dtype, max_num_seqs,
  // max_num_batched_tokens, kv_cache_memory, enable_prefix_caching, block_size, speculative,
  // num_speculative_tokens, chat_template. Throws InvalidArgument naming the key for an unknown
  // key or a malformed value (ranges the loader or engine check are checked when the LLM is made).
  void set(const std::string& key, const std::string& value);
  static const std::vector<std::string>& keys();
};

// One request's generation settings. Unset sampling fields take the model's
// generation_config.json defaults, as `gale generate` does (greedy unless it says do_sample).
struct GenerationParams {
  int64_t max_tokens = 16;  // vLLM's default
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;  // 0 or -1 = off
  float presence_penalty = 0, frequency_penalty = 0;
  std::optional<uint64_t> seed;  // unset: a random seed per request
  std::vector<std::string> stop;  // never part of the text; finish_reason "stop"
  bool ignore_eos = false;
  // -1: none; k >= 0: each new token's log-probability (of the distribution it was sampled
  // from, before temperature and filters) and the k most likely (vLLM's SamplingParams.logprobs).
  int logprobs = -1;
  // Structured output: JSON schema, json_object, regex, choice (a JSON array of strings) or a
  // GBNF grammar (grammar/grammar.h); a bad one is an InvalidArgument at submit.
  ConstraintSpec constraint;
};

// What a request produced since the previous Delta (next(), generate()'s callback).
struct Delta {
  uint64_t id = 0;
  std::vector<int32_t> ids;   // new tokens
  std::string text;           // new final text (stop strings cut; UTF-8 held back until complete)
  std::vector<TokenLogprob> logprobs;  // one per new token when GenerationParams::logprobs >= 0
  bool finished = false;
  std::string finish_reason;  // once finished: "stop", "length", "abort" or "error"
  std::string error;          // finish_reason "error": what failed
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};

// A finished request.
struct Completion {
  uint64_t id = 0;
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;
  std::string text;
  std::vector<TokenLogprob> logprobs;  // one per id when GenerationParams::logprobs >= 0
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};

class LLM {
 public:
  // Loads the model (and its draft, tokenizer, chat template); throws gale::Error naming the
  // problem (InvalidArgument for a bad option).
  explicit LLM(const LLMOptions& o);
  ~LLM();
  LLM(const LLM&) = delete;
  LLM& operator=(const LLM&) = delete;

  // The tokenizer; InvalidArgument when the model has none (synthetic models).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  bool has_tokenizer() const;
  int64_t vocab_size() const;  // the model's (logits) vocabulary
  // The chat template over messages (a JSON array of {role, content, ...}); tools: array or null;
  // extra_vars: template variables (chat_template_kwargs). InvalidArgument without a template.
  std::string apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt = true,
                                  const nlohmann::ordered_json& tools = nullptr,
                                  const nlohmann::ordered_json& extra_vars = nlohmann::ordered_json::object()) const;
  // Its token ids, as the server's /v1/chat/completions tokenizes it (no special tokens added:
  // the template writes them).
  std::vector<int32_t> encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt = true,
                                   const nlohmann::ordered_json& tools = nullptr,
                                   const nlohmann::ordered_json& extra_vars = nlohmann::ordered_json::object()) const;

  // Queues one request; InvalidArgument for an empty prompt, ids out of range, a prompt +
  // max_tokens past the context, parameters out of range. Returns its id.
  uint64_t submit(std::vector<int32_t> prompt, const GenerationParams& p);
  // What request `id` produced since the last call, running engine steps until it has something;
  // the Delta with finished = true is its last (the id is then forgotten). InvalidArgument for
  // an unknown or forgotten id.
  Delta next(uint64_t id);
  // Stops a request and forgets it; unknown ids are ignored.
  void cancel(uint64_t id);
  // Runs every prompt (params: one for all, or one per prompt) concurrently until all finish.
  // on_delta, when given, sees each Delta as it is produced; returning false cancels that
  // request (finish_reason "abort"). A request that fails in the engine cancels the rest and
  // throws gale::Error with its message.
  std::vector<Completion> generate(const std::vector<std::vector<int32_t>>& prompts,
                                   const std::vector<GenerationParams>& params,
                                   const std::function<bool(const Delta&)>& on_delta = {});

  const std::string& model_dir() const;
  EngineStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gale
