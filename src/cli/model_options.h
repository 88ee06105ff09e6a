// Options shared by the subcommands that run a model.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "model/transformer.h"

namespace gale::cli {

struct ModelOptions {
  std::string model;        // -m: folder or synthetic:NAME ("" = the bundled default model)
  std::string dtype = "f32";
  int threads = 0;          // 0 = all cores
};

void add_model_options(CLI::App* sub, ModelOptions& o, bool dtype = true);
// Resolves the model path (default model when -m is absent), applies --threads.
std::string resolve_model(const ModelOptions& o);
ActDType parse_act_dtype(const std::string& s);

}  // namespace gale::cli
