#include "api/engine_args.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/thread_pool.h"
#include "runtime/token_proposer.h"

namespace gale {

std::string resolve_model(const ModelOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  if (!o.model.empty()) return o.model;
  // The bundled default model: models/default next to the binary's source tree or installed.
  return default_model_dir();
}

std::string default_model_dir() {
  for (const char* p : {GALE_DEFAULT_MODEL_DIR, "models/default"})
    if (std::filesystem::exists(std::filesystem::path(p) / "config.json")) return p;
  throw Error("no model given (-m DIR) and the bundled default model was not found");
}

ActDType parse_act_dtype(const std::string& s) {
  if (s == "f32" || s.empty()) return ActDType::F32;
  if (s == "bf16") return ActDType::BF16;
  throw Error("--dtype must be f32 or bf16");
}

BackendOptions backend_options(const ModelOptions& o) {
  BackendOptions b;
  b.device = o.device.empty() ? default_device() : o.device;
  b.gpu_memory_utilization = o.gpu_memory_utilization;
  b.bf16_activations = parse_act_dtype(o.dtype) == ActDType::BF16;
  if (b.device != "cpu" && o.dtype == "f32")
    throw Error("--dtype f32: the CUDA backend runs bf16 activations (use --device cpu for f32)");
  return b;
}

LoadOptions load_options(const ModelOptions& o) {
  LoadOptions l;
  l.quantization = o.quantization;
  l.quantization_group = o.quantization_group;
  l.quantize_lm_head = o.quantize_lm_head;
  l.keep_16bit = o.keep_16bit;
  l.kv_cache_dtype = o.kv_cache_dtype;
  return l;
}

namespace {

// The same folder (the bundled model may be named by another path than the default's).
bool same_dir(const std::string& a, const std::string& b) {
  std::error_code ea, eb;
  const auto ca = std::filesystem::weakly_canonical(a, ea), cb = std::filesystem::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

// The model-free proposers (runtime/token_proposer.h), by their --speculative name.
std::shared_ptr<TokenProposer> model_free_proposer(const std::string& name) {
  if (name == "ngram") return make_ngram_proposer();
  if (name == "suffix") return make_suffix_proposer();
  throw Error("--speculative " + name + ": no such proposer (off, draft:DIR, ngram or suffix)");
}

}  // namespace

bool request_speculates(const EngineOptions& o, bool seed_given, float temperature) {
  return !(seed_given && temperature > 0 && o.speculative.empty());
}

std::string apply_speculation(const EngineOptions& o, const std::string& model_dir, EngineConfig& ec,
                              std::string* name) {
  const std::string& v = o.speculative;
  if (ec.followers) {
    if (!v.empty() && v != "off") throw Error("--speculative with --tp / --pp is not supported yet");
    return "";
  }
  int64_t k = 4;
  const bool adaptive = o.num_speculative_tokens == "auto";
  if (!adaptive) {
    const std::string& t = o.num_speculative_tokens;
    const bool digits = !t.empty() && t.size() <= 3 && std::all_of(t.begin(), t.end(), [](char c) { return std::isdigit(uint8_t(c)); });
    k = digits ? std::stoll(t) : -1;
    if (k < 1 || k > kMaxSpeculativeTokens)
      throw Error("--num-speculative-tokens must be auto or in [1, " + std::to_string(kMaxSpeculativeTokens) +
                  "] (got '" + t + "')");
  }
  std::string draft;
  if (v.empty()) {  // the bundled pair: on; anything else: off
    const std::filesystem::path bundled = std::filesystem::path(model_dir).parent_path() / "draft";
    if (same_dir(model_dir, GALE_DEFAULT_MODEL_DIR) && std::filesystem::exists(bundled / "config.json"))
      draft = bundled.string();
  } else if (v.rfind("draft:", 0) == 0) {
    draft = v.substr(6);
    if (draft.empty() || !std::filesystem::exists(std::filesystem::path(draft) / "config.json"))
      throw Error("--speculative " + v + ": no model (config.json) in '" + draft + "'");
  } else if (v == "ngram" || v == "suffix") {
    ec.proposer = model_free_proposer(v);
  } else if (v != "off") {
    throw Error("--speculative must be off, draft:DIR, ngram or suffix (got '" + v + "')");
  }
  const bool on = !draft.empty() || ec.proposer;
  ec.num_speculative_tokens = on ? k : 0;
  ec.speculative_adaptive = adaptive;
  if (name) *name = !draft.empty() ? "draft:" + draft : on ? v : "off";
  return draft;
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

EngineConfig engine_config(const EngineOptions& o, bool gpu) {
  EngineConfig c;
  c.block_size = o.block_size;
  c.max_num_seqs = o.max_num_seqs > 0 ? o.max_num_seqs : gpu ? kGpuMaxNumSeqs : kCpuMaxNumSeqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens > 0 ? o.max_num_batched_tokens
                             : gpu                        ? kGpuMaxNumBatchedTokens
                                                          : kCpuMaxNumBatchedTokens;
  c.kv_cache_bytes = o.kv_cache_memory.empty() ? 0 : parse_bytes(o.kv_cache_memory);
  c.prefix_cache = !o.no_prefix_cache;
  c.host_kv_cache_bytes = o.host_kv_cache.empty() ? 0 : parse_bytes(o.host_kv_cache);
  return c;
}

}  // namespace gale
