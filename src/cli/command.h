// Subcommand registry: each cmd_<name>.cpp registers itself, main.cpp only dispatches.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace gale::cli {

struct Command {
  int order;                                   // position in --help
  std::function<void(CLI::App& root)> setup;   // adds the subcommand and its callback
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(int order, std::function<void(CLI::App&)> setup) {
    command_registry().push_back({order, std::move(setup)});
  }
};

// Parses "1,2,3" (spaces allowed, empty string -> empty list); throws gale::Error on junk.
std::vector<int32_t> parse_id_list(const std::string& s);

}  // namespace gale::cli
