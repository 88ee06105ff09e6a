#include "model/checkpoint_folder.h"

#include <fstream>
#include <unistd.h>

#include "core/error.h"

namespace gale {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Files beside the weights that a checkpoint folder carries on unchanged.
constexpr const char* kSideFiles[] = {
    "tokenizer.json",        "tokenizer_config.json", "tokenizer.model",     "special_tokens_map.json",
    "added_tokens.json",     "vocab.json",            "merges.txt",          "generation_config.json",
    "chat_template.jinja",   "chat_template.json",    "preprocessor_config.json",
};

// Whether `inner` is `outer` or lies under it (both made absolute and normal).
bool path_within(const fs::path& inner, const fs::path& outer) {
  const fs::path a = fs::weakly_canonical(inner), b = fs::weakly_canonical(outer);
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai) {
    if (bi->empty()) continue;  // a trailing separator
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

void check_out(const std::string& source, const std::string& out_flag, bool force, const fs::path& out) {
  if (out_flag.empty()) throw Error("--out is required");
  if (path_within(source, out))
    throw Error("--out " + out_flag + " is or holds the source folder " + source + "; write somewhere else");
  if (!fs::exists(out)) return;
  if (!fs::is_directory(out)) throw Error("--out " + out_flag + " exists and is not a folder");
  if (!fs::is_empty(out) && !force) throw Error("--out " + out_flag + " exists and is not empty (--force replaces it)");
}

}  // namespace

json read_json_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error("cannot read " + p.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(p.string() + ": invalid JSON: " + e.what());
  }
}

void write_json_file(const fs::path& p, const json& j) {
  std::ofstream out(p, std::ios::binary);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) throw Error("cannot write " + p.string());
}

void copy_side_files(const fs::path& source, const fs::path& dir) {
  for (const char* f : kSideFiles) {
    const fs::path p = source / f;
    if (fs::is_regular_file(p)) fs::copy_file(p, dir / f);
  }
}

std::string write_checkpoint_folder(const std::string& source, const std::string& out_flag, bool force,
                                    const std::function<void(const fs::path& partial)>& write) {
  fs::path out = fs::absolute(fs::path(out_flag)).lexically_normal();
  if (out.has_parent_path() && !out.has_filename()) out = out.parent_path();  // "dir/"
  check_out(source, out_flag, force, out);
  const fs::path partial = out.parent_path() / (out.filename().string() + ".partial-" + std::to_string(::getpid()));
  try {
    fs::create_directories(out.parent_path());
    fs::remove_all(partial);  // a leftover of an earlier run with this pid
    fs::create_directory(partial);
    write(partial);
    if (fs::exists(out)) fs::remove_all(out);  // empty, or --force
    fs::rename(partial, out);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    throw Error("writing " + out.string() + ": " + e.code().message() + " (" + e.path1().string() + ")");
  } catch (...) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    throw;
  }
  return out.string();
}

}  // namespace gale
