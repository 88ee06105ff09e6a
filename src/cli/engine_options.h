// Options shared by the subcommands that run the Engine (generate, batch, serve, bench).
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "engine/engine.h"

namespace gale::cli {

struct EngineOptions {
  // 0 = the device's default (engine_config): a GPU needs far more rows per step than a CPU to
  // keep its tensor cores busy (on the H100, 1,000 x 128 -> 128 runs 2x faster at 256 sequences
  // than at 64; bench/RESULTS.md).
  int64_t max_num_seqs = 0;
  int64_t max_num_batched_tokens = 0;
  std::string kv_cache_memory;   // bytes, or with a unit: 512MiB, 2GiB, 1.5GB ("" = default)
  bool no_prefix_cache = false;
  int64_t block_size = 16;
  // Speculative decoding: off, draft:DIR, ngram or suffix ("" = the bundled draft when the
  // bundled model runs, else off); K in [1, 16] or auto.
  std::string speculative;
  std::string num_speculative_tokens = "auto";
};

// What --speculative and --num-speculative-tokens ask for with the target in model_dir: sets ec's
// speculation fields (and its model-free proposer) and returns the draft model's folder to load
// and hand to the Engine ("" = none). `name` gets the proposer's name ("off", "draft:DIR",
// "ngram", "suffix"), what a request's "speculative" field may repeat. Throws gale::Error for an
// unknown value or K out of range. Under --tp / --pp (ec.followers set) speculation is not
// supported yet: off unless asked for, and asked for it is an error.
std::string apply_speculation(const EngineOptions& o, const std::string& model_dir, EngineConfig& ec,
                              std::string* name = nullptr);

// many_seqs: also --max-num-seqs (commands that run several requests at once).
void add_engine_options(CLI::App* sub, EngineOptions& o, bool many_seqs = true);
// gpu: the model runs on a GPU (the defaults of --max-num-seqs and --max-num-batched-tokens
// differ: 64 and 512 on the CPU, 256 and 8,192 on a GPU).
EngineConfig engine_config(const EngineOptions& o, bool gpu);
inline constexpr int64_t kCpuMaxNumSeqs = 64, kGpuMaxNumSeqs = 256;
inline constexpr int64_t kCpuMaxNumBatchedTokens = 512, kGpuMaxNumBatchedTokens = 8192;
// "2GiB", "512MiB", "1.5GB", "1000000" -> bytes; throws gale::Error on anything else.
int64_t parse_bytes(const std::string& s);

}  // namespace gale::cli
