// Engine benchmarks behind `gale bench --mode throughput|shared-prefix`.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace gale::cli {

struct EngineBenchOptions {
  EngineConfig engine;
  int64_t requests = 32;
  int64_t prompt = 128, gen = 32;           // throughput: tokens per request
  std::vector<int64_t> concurrency = {1, 2, 4, 8, 16};
  int64_t prefix = 1000, suffix = 16;       // shared-prefix workload
  bool json = false;
  // Throughput: prompts cut from this token stream (a tokenized text, --prompts-file) instead of
  // random ids; request i takes the `prompt` tokens from i * prompt on (wrapping around).
  std::vector<int32_t> prompt_source;
  // Speculative decoding (engine's num_speculative_tokens > 0): the draft model when it proposes.
  // Each concurrency then also runs with speculation off (no draft), alternating `reps` times
  // (best of each kept), for speedup_vs_off.
  Transformer* draft = nullptr;
  std::string speculative = "off";
  int reps = 1;
  // Constrained decoding (--json-schema): every request constrained to this grammar, each
  // concurrency also run unconstrained (alternating `reps` times, best of each kept). Requests
  // stop where the grammar ends, so a schema whose outputs outlast --gen compares like with like.
  std::shared_ptr<const CompiledGrammar> grammar;
  double grammar_compile_ms = 0;  // vocabulary view + schema compile, as measured by the caller
  std::vector<int32_t> eos_ids;
};

// Each returns the JSON object that --json prints (for --record).
// Output tokens/s against max_num_seqs (random prompts, ignore_eos).
nlohmann::json bench_throughput(Transformer& m, const std::string& model_name, const EngineBenchOptions& o);
// Requests sharing a long prefix, with and without the prefix cache: prefill saved, speed-up.
nlohmann::json bench_shared_prefix(Transformer& m, const std::string& model_name, const EngineBenchOptions& o);
// The host KV tier: a prefix pushed out of a device pool sized for one request at a time by a
// request of other tokens, then asked for again: its prefill with the tier (brought back from
// host memory) against without (recomputed). --host-kv-cache sizes the tier (default 1 GiB).
nlohmann::json bench_host_tier(Transformer& m, const std::string& model_name, const EngineBenchOptions& o);

}  // namespace gale::cli
