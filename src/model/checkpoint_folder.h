// Writing a checkpoint folder beside a source one (`gale quantize`, `gale prune`): the --out
// rules, the atomic write (into "<out>.partial-<pid>", renamed over --out only once complete),
// JSON files and the side files (tokenizer, chat template, generation config) copied as they are.
#pragma once
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace gale {

nlohmann::json read_json_file(const std::filesystem::path& p);
void write_json_file(const std::filesystem::path& p, const nlohmann::json& j);

// Copies the files beside the weights a checkpoint folder carries unchanged (tokenizer files,
// generation_config.json, chat templates) from `source` into `dir`, those that exist.
void copy_side_files(const std::filesystem::path& source, const std::filesystem::path& dir);

// Checks --out (required; not the source nor holding it; a non-empty folder only with force),
// calls write(partial) on a fresh "<out>.partial-<pid>" folder beside it, then renames that over
// --out. Any failure removes the partial folder and is rethrown (filesystem errors as
// gale::Error). Returns the absolute, normal --out.
std::string write_checkpoint_folder(const std::string& source, const std::string& out, bool force,
                                    const std::function<void(const std::filesystem::path& partial)>& write);

}  // namespace gale
