#include "cli/engine_options.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace gale::cli {

void add_engine_options(CLI::App* sub, EngineOptions& o, bool many_seqs) {
  if (many_seqs)
    sub->add_option("--max-num-seqs", o.max_num_seqs, "Sequences running at once (default 64)")->check(CLI::PositiveNumber);
  sub->add_option("--max-num-batched-tokens", o.max_num_batched_tokens,
                  "Tokens per forward pass: decodes first, prefill chunks fill the rest (default 512)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-cache-memory", o.kv_cache_memory,
                  "KV cache size in bytes or with a unit (2GiB, 512MiB); default: what --max-num-seqs full-context "
                  "sequences need, at most 40% of available memory");
  sub->add_flag("--no-prefix-cache", o.no_prefix_cache, "Do not share KV blocks of common prompt prefixes");
  sub->add_option("--block-size", o.block_size, "Tokens per KV block (default 16)")->check(CLI::PositiveNumber);
}

int64_t parse_bytes(const std::string& s) {
  size_t i = 0, dots = 0;
  while (i < s.size() && (std::isdigit(uint8_t(s[i])) || s[i] == '.')) dots += s[i++] == '.';
  if (i == 0 || dots > 1 || s[0] == '.' || s[i - 1] == '.')
    throw Error("bad size '" + s + "' (expected e.g. 2GiB, 512MiB or a byte count)");
  // strtod, not stod: 400 digits give HUGE_VAL (refused below) rather than an exception.
  const std::string number = s.substr(0, i);
  double v = std::strtod(number.c_str(), nullptr);
  std::string unit = s.substr(i);
  for (auto& c : unit) c = char(std::tolower(uint8_t(c)));
  double mul;
  if (unit.empty() || unit == "b") mul = 1;
  else if (unit == "k" || unit == "kib") mul = 1024.0;
  else if (unit == "m" || unit == "mib") mul = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib") mul = 1024.0 * 1024 * 1024;
  else if (unit == "kb") mul = 1e3;
  else if (unit == "mb") mul = 1e6;
  else if (unit == "gb") mul = 1e9;
  else throw Error("bad size unit in '" + s + "' (use B, KiB, MiB, GiB, KB, MB or GB)");
  double bytes = v * mul;
  if (!(bytes >= 1) || bytes > 9e18) throw Error("bad size '" + s + "'");
  return int64_t(std::llround(bytes));
}

EngineConfig engine_config(const EngineOptions& o) {
  EngineConfig c;
  c.block_size = o.block_size;
  c.max_num_seqs = o.max_num_seqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens;
  c.kv_cache_bytes = o.kv_cache_memory.empty() ? 0 : parse_bytes(o.kv_cache_memory);
  c.prefix_cache = !o.no_prefix_cache;
  return c;
}

}  // namespace gale::cli
