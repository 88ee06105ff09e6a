// What loads a model and configures the Engine, as plain values: the `gale` subcommands fill these
// from their flags (cli/model_options.h, cli/engine_options.h add the flags), the in-process API
// (api/llm.h: the C API and the Python module) from its key/value engine arguments. One set of
// defaults and one set of checks for every front end.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "model/backend_factory.h"
#include "model/model_loader.h"
#include "model/transformer.h"

namespace gale {

struct ModelOptions {
  std::string model;        // -m: folder or synthetic:NAME ("" = the bundled default model)
  std::string dtype;        // "" = f32 on the CPU, bf16 on a GPU
  int threads = 0;          // 0 = all cores
  std::string device;       // --device: "" = cuda when a GPU is present, else cpu
  double gpu_memory_utilization = 0.9;
  std::string quantization = "none";  // --quantization: none, fp8, int8 or int4 (quantize the weights at load)
  int64_t quantization_group = 0;     // --quantization-group: columns per int8 / int4 scale (0: the scheme's)
  bool quantize_lm_head = false;      // --quantize-lm-head: fp8 / int8 / int4 take the LM head too
  std::vector<std::string> keep_16bit;  // --keep-16bit PATTERN (repeatable): projections fp8 leaves as stored
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype: auto, bf16 or fp8
};

struct EngineOptions {
  // 0 = the device's default (engine_config): a GPU needs far more rows per step than a CPU to
  // keep its tensor cores busy (on the H100, 1,000 x 128 -> 128 runs 2x faster at 256 sequences
  // than at 64; bench/RESULTS.md).
  int64_t max_num_seqs = 0;
  int64_t max_num_batched_tokens = 0;
  std::string kv_cache_memory;   // bytes, or with a unit: 512MiB, 2GiB, 1.5GB ("" = default)
  bool no_prefix_cache = false;
  std::string host_kv_cache;     // --host-kv-cache: bytes or with a unit ("" = none)
  int64_t block_size = 16;
  // Speculative decoding: off, draft:DIR, ngram or suffix ("" = the bundled draft when the
  // bundled model runs, else off); K in [1, 16] or auto.
  std::string speculative;
  std::string num_speculative_tokens = "auto";
};

// Resolves the model path (the bundled default model when o.model is empty), applies --threads.
std::string resolve_model(const ModelOptions& o);
// The bundled default model's folder (models/default of the source tree, or ./models/default).
std::string default_model_dir();
ActDType parse_act_dtype(const std::string& s);
// The backend the options ask for (device, dtype, GPU memory share); throws gale::Error for
// combinations the backend cannot run (--dtype f32 on a GPU).
BackendOptions backend_options(const ModelOptions& o);
// What loading does to the weights (--quantization, --keep-16bit) and the KV cache's dtype (--kv-cache-dtype).
LoadOptions load_options(const ModelOptions& o);

// What --speculative and --num-speculative-tokens ask for with the target in model_dir: sets ec's
// speculation fields (and its model-free proposer) and returns the draft model's folder to load
// and hand to the Engine ("" = none). `name` gets the proposer's name ("off", "draft:DIR",
// "ngram", "suffix"), what a request's "speculative" field may repeat. Throws gale::Error for an
// unknown value or K out of range. Under --tp / --pp (ec.followers set) speculation is not
// supported yet: off unless asked for, and asked for it is an error.
std::string apply_speculation(const EngineOptions& o, const std::string& model_dir, EngineConfig& ec,
                              std::string* name = nullptr);
// Whether a request with these sampling settings may speculate. A seed promises the same
// samples on a rerun, and with speculation a sampled request's draws depend on how many tokens
// each step proposed, which the auto controller picks from measured step times; so a seeded
// sampled request speculates only when the user named a proposer (o.speculative set), not under
// the bundled default. The server's per-request "speculative" field follows the same rule.
bool request_speculates(const EngineOptions& o, bool seed_given, float temperature);
// gpu: the model runs on a GPU (the defaults of --max-num-seqs and --max-num-batched-tokens
// differ: 64 and 512 on the CPU, 256 and 8,192 on a GPU).
EngineConfig engine_config(const EngineOptions& o, bool gpu);
inline constexpr int64_t kCpuMaxNumSeqs = 64, kGpuMaxNumSeqs = 256;
inline constexpr int64_t kCpuMaxNumBatchedTokens = 512, kGpuMaxNumBatchedTokens = 8192;
// "2GiB", "512MiB", "1.5GB", "1000000" -> bytes; throws gale::Error on anything else.
int64_t parse_bytes(const std::string& s);

}  // namespace gale
