// gale info: what a model is and what it needs.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_options.h"
#include "model/kv_cache.h"
#include "model/model_loader.h"

namespace gale::cli {
namespace {

struct InfoOptions {
  ModelOptions model;
  bool json = false;
};

int64_t count_parameters(const ModelConfig& c) {
  const int64_t H = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
  int64_t per_layer = 2 * H + H * c.num_heads * hd * 2 + 2 * H * c.num_kv_heads * hd;
  if (c.qkv_bias) per_layer += (c.num_heads + 2 * c.num_kv_heads) * hd;
  if (c.o_bias) per_layer += H;
  if (c.qk_norm) per_layer += 2 * hd;
  per_layer += c.num_experts > 0 ? c.num_experts * (3 * H * I) + c.num_experts * H : 3 * H * I + (c.mlp_bias ? 2 * I + H : 0);
  return c.vocab_size * H * (c.tie_word_embeddings ? 1 : 2) + H + c.num_layers * per_layer;
}

CommandRegistrar reg{30, [](CLI::App& root) {
  auto o = std::make_shared<InfoOptions>();
  CLI::App* sub = root.add_subcommand("info", "Show a model's architecture, size, dtypes and memory needs");
  add_model_options(sub, o->model, /*dtype=*/false);
  sub->add_flag("--json", o->json, "JSON output");
  sub->callback([o] {
    // On the CPU, with --quantization applied: the weights as they would run (weight_bytes, dtypes).
    LoadOptions lo = load_options(o->model);
    LoadedModel lm = load_model(resolve_model(o->model), BackendOptions{}, lo);
    const ModelConfig& c = lm.model->config();
    const ModelWeights& w = lm.model->weights();
    const int64_t params = count_parameters(c);
    const size_t kv_f32 = KVCache::bytes_per_token(c, DType::F32), kv_bf16 = KVCache::bytes_per_token(c, DType::BF16);
    const size_t kv_fp8 = KVCache::bytes_per_token(c, DType::F8_E4M3);
    // The KV dtype --kv-cache-dtype gives on the CPU (auto: f32 there; a GPU's auto is bf16).
    const KVFormat& kvf = lm.model->kv_format();
    std::string window;
    for (int64_t x : c.layer_window) if (x) { window = std::to_string(x); break; }
    nlohmann::json j = {
        {"source", lm.source}, {"architecture", c.architecture}, {"parameters", params},
        {"dtypes", w.dtypes}, {"weight_bytes", w.total_bytes}, {"quantization", c.quant.describe()},
        {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
        {"num_layers", c.num_layers}, {"num_heads", c.num_heads}, {"num_kv_heads", c.num_kv_heads},
        {"head_dim", c.head_dim}, {"max_position_embeddings", c.max_position_embeddings},
        {"tie_word_embeddings", c.tie_word_embeddings}, {"rope_type", rope_type_name(c.rope.type)},
        {"rope_theta", c.rope.theta}, {"num_experts", c.num_experts}, {"num_experts_per_tok", c.num_experts_per_tok},
        {"kv_bytes_per_token_f32", kv_f32}, {"kv_bytes_per_token_bf16", kv_bf16}, {"kv_bytes_per_token_fp8", kv_fp8},
        {"kv_cache_dtype", kv_cache_dtype_name(kvf.dtype)}, {"kv_cache_scales", lm.model->kv_scale_source()},
        {"memory_bytes_full_context_bf16_kv", w.total_bytes + kv_bf16 * size_t(c.max_position_embeddings)}};
    if (!kvf.k_scale.empty()) {
      j["kv_cache_k_scales"] = kvf.k_scale;
      j["kv_cache_v_scales"] = kvf.v_scale;
    }
    if (o->json) {
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    auto gib = [](double b) { return b / double(1ull << 30); };
    std::string dts;
    for (auto& d : w.dtypes) dts += (dts.empty() ? "" : ", ") + d;
    std::printf("model          %s\n", lm.source.c_str());
    std::printf("architecture   %s\n", c.architecture.c_str());
    std::printf("parameters     %.3f B (%lld)\n", double(params) / 1e9, (long long)params);
    std::printf("dtypes         %s\n", dts.c_str());
    if (c.quant.quantized()) std::printf("quantization   %s\n", c.quant.describe().c_str());
    std::printf("weights        %.3f GiB\n", gib(double(w.total_bytes)));
    std::printf("layers         %lld, hidden %lld, ffn %lld, heads %lld/%lld (head_dim %lld)\n", (long long)c.num_layers,
                (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_heads,
                (long long)c.num_kv_heads, (long long)c.head_dim);
    if (c.num_experts) std::printf("experts        %lld, top-%lld\n", (long long)c.num_experts, (long long)c.num_experts_per_tok);
    std::printf("vocab          %lld%s\n", (long long)c.vocab_size, c.tie_word_embeddings ? " (tied embeddings)" : "");
    std::printf("rope           %s, theta %g\n", rope_type_name(c.rope.type), c.rope.theta);
    if (!window.empty()) std::printf("sliding window %s\n", window.c_str());
    std::printf("context        %lld tokens\n", (long long)c.max_position_embeddings);
    std::printf("KV cache       %.1f KiB/token (bf16), %.1f KiB/token (fp8), %.1f KiB/token (f32)\n",
                double(kv_bf16) / 1024, double(kv_fp8) / 1024, double(kv_f32) / 1024);
    std::printf("KV dtype       %s%s%s (--kv-cache-dtype %s, on the CPU)\n", kv_cache_dtype_name(kvf.dtype),
                lm.model->kv_scale_source().empty() ? "" : ", scales ", lm.model->kv_scale_source().c_str(),
                o->model.kv_cache_dtype.c_str());
    std::printf("memory needed  %.3f GiB weights + %.3f GiB KV (bf16) for the full context\n", gib(double(w.total_bytes)),
                gib(double(kv_bf16) * double(c.max_position_embeddings)));
  });
}};

}  // namespace
}  // namespace gale::cli
