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
};

CommandRegistrar reg{26, [](CLI::App& root) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* sub = root.add_subcommand(
      "eval", "Compare a model with a reference: perplexities, KL divergence and top-1 agreement (perplexity's windows)");
  add_model_options(sub, o->model);
  sub->add_option("--reference", o->reference,
                  "Reference model folder (same tokenizer; default: the model's own folder), loaded with the "
                  "same --device / --dtype");
  sub->add_option("--reference-quantization", o->reference_quantization,
                  "How the reference's weights are loaded: none (as stored, the default) or fp8")
      ->check(CLI::IsMember({"none", "fp8"}));
  sub->add_option("--file", o->file, "Text file")->required();
  sub->add_option("--ctx", o->ctx, "Window length in tokens (default 512)");
  sub->add_option("--stride", o->stride, "Window step in tokens (default ctx/2)");
  sub->add_flag("--json", o->json, "JSON output");
  sub->callback([o] {
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
