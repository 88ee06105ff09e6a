// gale perplexity: sliding-window perplexity of a text file, comparable with transformers.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.h"
#include "cli/model_options.h"
#include "cli/progress.h"
#include "core/error.h"
#include "engine/perplexity.h"
#include "model/model_loader.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct PerplexityOptions {
  ModelOptions model;
  std::string file;
  int64_t ctx = 512;
  int64_t stride = 0;  // 0 = ctx / 2
  bool json = false;
};

CommandRegistrar reg{25, [](CLI::App& root) {
  auto o = std::make_shared<PerplexityOptions>();
  CLI::App* sub = root.add_subcommand("perplexity", "Perplexity of a text file (sliding windows, as the HF guide)");
  add_model_options(sub, o->model);
  sub->add_option("--file", o->file, "Text file")->required();
  sub->add_option("--ctx", o->ctx, "Window length in tokens (default 512)");
  sub->add_option("--stride", o->stride, "Window step in tokens (default ctx/2)");
  sub->add_flag("--json", o->json, "JSON output");
  sub->callback([o] {
    const std::string dir = resolve_model(o->model);
    std::ifstream in(o->file, std::ios::binary);
    if (!in) throw Error("cannot read " + o->file);
    std::stringstream ss;
    ss << in.rdbuf();
    LoadedModel lm = load_model(dir, backend_options(o->model), load_options(o->model));
    if (lm.synthetic) throw Error("perplexity needs a model folder with a tokenizer");
    auto tok = Tokenizer::load(dir);
    std::vector<int32_t> ids = tok->encode(ss.str(), /*add_special_tokens=*/true);
    const int64_t ctx = std::min<int64_t>(o->ctx, lm.model->config().max_position_embeddings);
    const int64_t stride = o->stride > 0 ? o->stride : std::max<int64_t>(1, ctx / 2);
    PerplexityResult r = perplexity(*lm.model, ids, ctx, stride, window_progress(o->json));
    if (o->json) {
      nlohmann::json j = {{"perplexity", r.ppl}, {"tokens", ids.size()}, {"scored_tokens", r.scored_tokens},
                          {"windows", r.windows}, {"ctx", ctx}, {"stride", stride},
                          {"mean_nll", r.nll_sum / double(r.scored_tokens)}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("perplexity %.4f  (%zu tokens, %lld windows of %lld, stride %lld)\n", r.ppl, ids.size(),
                  (long long)r.windows, (long long)ctx, (long long)stride);
    }
  });
}};

}  // namespace
}  // namespace gale::cli
