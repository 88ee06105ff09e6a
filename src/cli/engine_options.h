// Flags shared by the subcommands that run the Engine (generate, batch, serve, bench). The
// options themselves, their defaults and checks live in api/engine_args.h (the in-process API
// takes the same ones).
#pragma once
#include <CLI/CLI.hpp>

#include "api/engine_args.h"

namespace gale::cli {

// many_seqs: also --max-num-seqs (commands that run several requests at once).
void add_engine_options(CLI::App* sub, EngineOptions& o, bool many_seqs = true);

}  // namespace gale::cli
