// Flags shared by the subcommands that run a model. The options themselves, their defaults and
// checks live in api/engine_args.h (the in-process API takes the same ones).
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "api/engine_args.h"

namespace gale::cli {

void add_model_options(CLI::App* sub, ModelOptions& o, bool dtype = true);
// --keep-16bit PATTERN, repeatable (one pattern per occurrence); also `gale quantize`'s.
void add_keep_16bit_option(CLI::App* sub, std::vector<std::string>& patterns);

}  // namespace gale::cli
