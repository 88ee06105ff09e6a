#include "cli/model_options.h"

#include <filesystem>

#include "core/error.h"
#include "core/thread_pool.h"

namespace gale::cli {

void add_model_options(CLI::App* sub, ModelOptions& o, bool dtype) {
  sub->add_option("-m,--model", o.model, "Model folder (config.json, *.safetensors, tokenizer.json) or synthetic:NAME");
  if (dtype) sub->add_option("--dtype", o.dtype, "Activation dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
}

std::string resolve_model(const ModelOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  if (!o.model.empty()) return o.model;
  // The bundled default model: models/default next to the binary's source tree or installed.
  for (const char* p : {GALE_DEFAULT_MODEL_DIR, "models/default"})
    if (std::filesystem::exists(std::filesystem::path(p) / "config.json")) return p;
  throw Error("no model given (-m DIR) and the bundled default model was not found");
}

ActDType parse_act_dtype(const std::string& s) {
  if (s == "f32") return ActDType::F32;
  if (s == "bf16") return ActDType::BF16;
  throw Error("--dtype must be f32 or bf16");
}

}  // namespace gale::cli
