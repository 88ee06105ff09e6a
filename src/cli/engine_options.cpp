#include "cli/engine_options.h"

namespace gale::cli {

void add_engine_options(CLI::App* sub, EngineOptions& o, bool many_seqs) {
  if (many_seqs)
    sub->add_option("--max-num-seqs", o.max_num_seqs, "Sequences running at once (default 64 on the CPU, 256 on a GPU)")->check(CLI::PositiveNumber);
  sub->add_option("--max-num-batched-tokens", o.max_num_batched_tokens,
                  "Tokens per forward pass: decodes first, prefill chunks fill the rest (default 512 on the CPU, "
                  "8192 on a GPU)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-cache-memory", o.kv_cache_memory,
                  "KV cache size in bytes or with a unit (2GiB, 512MiB); default: what --max-num-seqs full-context "
                  "sequences need, at most 40% of available memory");
  sub->add_flag("--no-prefix-cache", o.no_prefix_cache, "Do not share KV blocks of common prompt prefixes");
  sub->add_option("--host-kv-cache", o.host_kv_cache,
                  "Host memory (4GiB, 512MiB; pinned on a GPU) that keeps prefix-cache blocks evicted from the KV "
                  "cache and copies them back on a prefix hit instead of recomputing them (default: none)");
  sub->add_option("--block-size", o.block_size, "Tokens per KV block (default 16)")->check(CLI::PositiveNumber);
  sub->add_option("--speculative", o.speculative,
                  "Speculative decoding: off, draft:DIR (a small model with the same tokenizer), ngram or suffix "
                  "(default: the bundled draft model when the bundled model runs, else off)")
      ->type_name("off|draft:DIR|ngram|suffix");
  sub->add_option("--num-speculative-tokens", o.num_speculative_tokens,
                  "Tokens proposed per request and step: K (1-" + std::to_string(kMaxSpeculativeTokens) +
                      "), or auto (default): up to 4, chosen per step from the measured acceptance and step "
                      "times, off when it would not pay")
      ->type_name("K|auto");
}

}  // namespace gale::cli
