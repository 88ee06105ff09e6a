// --config FILE for `gale serve` and `gale batch`: the file's keys (api/config_file.h) set the
// command's flags of the same long name, unless the command line gave that flag (the command
// line wins). A key that names no flag of the command is an error naming the key.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace gale::cli {

void add_config_option(CLI::App* sub, std::string& path);
// Call first thing in the command's callback; does nothing when path is empty. Throws
// gale::Error "FILE:LINE: ..." for an unknown key or a value the flag refuses.
void apply_config_file(CLI::App* sub, const std::string& path);

}  // namespace gale::cli
