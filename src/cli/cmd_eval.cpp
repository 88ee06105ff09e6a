// gale eval: a model against a reference over the windows of `gale perplexity`: both
// perplexities, KL(reference || model) of the next-token distributions and top-1 agreement.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.h"
#include "cli/model_options.h"
#include "cli/progress.h"
#include "core/error.h"
#include "engine/eval_compare.h"
#include "model/model_loader.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct EvalOptions {
  ModelOptions model;
  std::string reference;               // --reference: "" = the model's folder
  std::string reference_quantization;  // --reference-quantization: "" = none
  std::string file;
  int64_t ctx = 512;
  int64_t stride = 0;  // 0 = ctx / 2
  bool json = false;
  bool sensitivity = false;  // --sensitivity: one layer quantized at a time, ranked by the KL it adds
};

// The per-layer sensitivity pass (--sensitivity): for each layer, the model loaded with only
// that layer's projections quantized (every other layer kept as stored by --keep-16bit
// patterns), compared with the reference over the same windows. The layers whose KL stands out
// (more than twice the median layer's, at most a quarter of them, the worst first) are the
// suggested --keep-16bit set: mixed precision chosen by measured sensitivity.
struct LayerSensitivity {
  int64_t layer = 0;
  EvalResult r;
};

std::vector<std::string> keep_all_but(int64_t layers, int64_t keep_out, const std::vector<std::string>& user) {
  std::vector<std::string> p = user;
  for (int64_t j = 0; j < layers; ++j)
    if (j != keep_out) p.push_back("model.layers." + std::to_string(j) + ".*");
  return p;
}

std::vector<int64_t> suggested_layers(std::vector<LayerSensitivity> s) {
  if (s.empty()) return {};
  std::sort(s.begin(), s.end(), [](const auto& a, const auto& b) { return a.r.kl_mean > b.r.kl_mean; });
  const double median = s[s.size() / 2].r.kl_mean;
  std::vector<int64_t> out;
  for (const auto& l : s)
    if (l.r.kl_mean > 2.0 * median && int64_t(out.size()) < std::max<int64_t>(1, int64_t(s.size()) / 4))
      out.push_back(l.layer);
  return out;
}

CommandRegistrar reg{26, [](CLI::App& root) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* sub = root.add_subcommand(
      "eval", "Compare a model with a reference: perplexities, KL divergence and top-1 agreement (perplexity's windows)");
  add_model_options(sub, o->model);
  sub->add_option("--reference", o->reference,
                  "Reference model folder (same tokenizer; default: the model's own folder), loaded with the "
                  "same --device / --dtype");
  sub->add_option("--reference-quantization", o->reference_quantization,
                  "How the reference's weights are loaded: none (as stored, the default), fp8, int8 or int4")
      ->check(CLI::IsMember({"none", "fp8", "int8", "int4"}));
  sub->add_option("--file", o->file, "Text file")->required();
  sub->add_option("--ctx", o->ctx, "Window length in tokens (default 512)");
  sub->add_option("--stride", o->stride, "Window step in tokens (default ctx/2)");
  sub->add_flag("--json", o->json, "JSON output");
  sub->add_flag("--sensitivity", o->sensitivity,
                "With --quantization fp8, int8 or int4: quantize one layer at a time (the others kept as stored), rank the layers "
                "by the KL each adds, and suggest the --keep-16bit set (layers over twice the median KL, at most a "
                "quarter of them)");
  sub->callback([o] {
    if (o->sensitivity && o->model.quantization == "none")
      throw Error("--sensitivity measures what --quantization does to each layer: add --quantization fp8, int8 or int4");
    if (o->reference.empty() && o->reference_quantization.empty())
      throw Error("eval needs a reference: --reference DIR, or --reference-quantization none for the model's "
                  "own folder as stored");
    const std::string dir = resolve_model(o->model);
    const std::string ref_dir = o->reference.empty() ? dir : o->reference;
    std::ifstream in(o->file, std::ios::binary);
    if (!in) throw Error("cannot read " + o->file);
    std::stringstream ss;
    ss << in.rdbuf();

    ModelOptions ref_options = o->model;
    ref_options.model = ref_dir;
    ref_options.quantization = o->reference_quantization.empty() ? "none" : o->reference_quantization;
    // The reference is the checkpoint as stated: none of the model's other lossy choices (the
    // layers --keep-16bit spares, a quantized LM head, an FP8 KV cache) apply to it.
    ref_options.keep_16bit.clear();
    ref_options.quantization_group = 0;  // the model's integer options are the model's
    ref_options.quantize_lm_head = false;
    ref_options.kv_cache_dtype = "auto";
    LoadedModel lm = load_model(dir, backend_options(o->model), load_options(o->model));
    if (lm.synthetic) throw Error("eval needs a model folder with a tokenizer");
    LoadedModel ref = load_model(ref_dir, backend_options(ref_options), load_options(ref_options));
    if (ref.synthetic) throw Error("eval needs a reference folder with a tokenizer");
    check_comparable(*lm.model, *ref.model);

    // Both models read the same ids: the reference's tokenizer must split the text the same way.
    std::vector<int32_t> ids = Tokenizer::load(dir)->encode(ss.str(), /*add_special_tokens=*/true);
    if (ref_dir != dir && Tokenizer::load(ref_dir)->encode(ss.str(), /*add_special_tokens=*/true) != ids)
      throw Error("the reference's tokenizer (" + ref_dir + ") encodes " + o->file +
                  " differently from the model's: eval compares models that share a tokenizer");
    const int64_t ctx = std::min({o->ctx, lm.model->config().max_position_embeddings,
                                  ref.model->config().max_position_embeddings});
    const int64_t stride = o->stride > 0 ? o->stride : std::max<int64_t>(1, ctx / 2);
    EvalResult r = eval_compare(*lm.model, *ref.model, ids, ctx, stride, window_progress(o->json));
    if (o->sensitivity) {
      const int64_t L = lm.model->config().num_layers;
      lm.model.reset();  // one quantized model at a time
      std::vector<LayerSensitivity> layers;
      for (int64_t i = 0; i < L; ++i) {
        ModelOptions one = o->model;
        one.keep_16bit = keep_all_but(L, i, o->model.keep_16bit);
        one.quantize_lm_head = false;  // layer i's own cost, not the head's
        LoadedModel m = load_model(dir, backend_options(one), load_options(one));
        if (!o->json) std::fprintf(stderr, "layer %lld/%lld\n", (long long)(i + 1), (long long)L);
        layers.push_back({i, eval_compare(*m.model, *ref.model, ids, ctx, stride, {})});
      }
      const std::vector<int64_t> keep = suggested_layers(layers);
      std::vector<std::string> flags;
      for (int64_t i : keep) flags.push_back("model.layers." + std::to_string(i) + ".*");
      if (o->json) {
        nlohmann::json rows = nlohmann::json::array();
        for (const auto& l : layers)
          rows.push_back({{"layer", l.layer}, {"kl_divergence", l.r.kl_mean}, {"kl_p99", l.r.kl_p99},
                          {"top1_agreement", l.r.top1_agreement}, {"perplexity", l.r.model.ppl}});
        nlohmann::json j = {{"perplexity", r.model.ppl}, {"reference_perplexity", r.reference.ppl},
                            {"kl_divergence", r.kl_mean}, {"top1_agreement", r.top1_agreement},
                            {"quantization", o->model.quantization}, {"layers", rows},
                            {"suggested_keep_16bit", flags}, {"scored_tokens", r.positions}, {"ctx", ctx},
                            {"stride", stride}, {"model", dir}, {"reference", ref_dir}};
        std::printf("%s\n", j.dump().c_str());
        return;
      }
      std::printf("all layers %s: perplexity %.4f (reference %.4f), KL %.6f, top-1 %.4f\n",
                  o->model.quantization.c_str(), r.model.ppl, r.reference.ppl, r.kl_mean, r.top1_agreement);
      std::printf("%-6s %-12s %-10s %-10s %s\n", "layer", "KL mean", "KL p99", "top-1", "perplexity");
      for (const auto& l : layers)
        std::printf("%-6lld %-12.6f %-10.6f %-10.4f %.4f\n", (long long)l.layer, l.r.kl_mean, l.r.kl_p99,
                    l.r.top1_agreement, l.r.model.ppl);
      std::string line;
      for (const auto& f : flags) line += " --keep-16bit '" + f + "'";
      std::printf("suggested:%s\n", line.empty() ? " none (no layer stands out)" : line.c_str());
      return;
    }

    if (o->json) {
      nlohmann::json j = {{"perplexity", r.model.ppl},
                          {"reference_perplexity", r.reference.ppl},
                          {"kl_divergence", r.kl_mean},
                          {"kl_p99", r.kl_p99},
                          {"kl_max", r.kl_max},
                          {"top1_agreement", r.top1_agreement},
                          {"same_top1", r.same_top1},
                          {"scored_tokens", r.positions},
                          {"tokens", ids.size()},
                          {"windows", r.windows},
                          {"ctx", ctx},
                          {"stride", stride},
                          {"model", dir},
                          {"quantization", o->model.quantization},
                          {"weight_bytes", lm.model->weights().total_bytes},
                          {"reference", ref_dir},
                          {"reference_quantization", ref_options.quantization},
                          {"reference_weight_bytes", ref.model->weights().total_bytes}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    auto mib = [](size_t b) { return double(b) / double(1 << 20); };
    const int w = int(std::max<size_t>(14, dir.size() + 2));
    std::printf("%-16s %-*s %s\n", "", w, "model", "reference");
    std::printf("%-16s %-*s %s\n", "folder", w, dir.c_str(), ref_dir.c_str());
    std::printf("%-16s %-*s %s\n", "quantization", w, o->model.quantization.c_str(), ref_options.quantization.c_str());
    std::printf("%-16s %-*.2f %.2f\n", "weights (MiB)", w, mib(lm.model->weights().total_bytes),
                mib(ref.model->weights().total_bytes));
    std::printf("%-16s %-*.4f %.4f\n", "perplexity", w, r.model.ppl, r.reference.ppl);
    std::printf("KL(reference || model)  mean %.6f  p99 %.6f  max %.6f\n", r.kl_mean, r.kl_p99, r.kl_max);
    std::printf("top-1 agreement         %.4f  (%lld of %lld positions)\n", r.top1_agreement, (long long)r.same_top1,
                (long long)r.positions);
    std::printf("%zu tokens, %lld windows of %lld, stride %lld\n", ids.size(), (long long)r.windows, (long long)ctx,
                (long long)stride);
  });
}};

}  // namespace
}  // namespace gale::cli
