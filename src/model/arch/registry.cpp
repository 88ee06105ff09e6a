#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/arch/arch.h"

namespace gale {

namespace {

const std::vector<const Architecture*>& all() {
  static const std::vector<const Architecture*> a = {&llama_architecture(), &mistral_architecture(),
                                                     &qwen2_architecture(), &qwen3_architecture(),
                                                     &mixtral_architecture(), &phi3_architecture()};
  return a;
}

}  // namespace

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Architecture* a : all()) n.insert(n.end(), a->names.begin(), a->names.end());
    return n;
  }();
  return names;
}

const Architecture& find_architecture(const std::string& name, const std::string& what) {
  for (const Architecture* a : all())
    for (const std::string& n : a->names)
      if (n == name) return *a;
  std::string list;
  for (const std::string& s : supported_architectures()) list += (list.empty() ? "" : ", ") + s;
  throw Error(what + ": unsupported architecture '" + name + "' (supported: " + list + ")");
}

ModelConfig parse_model_config(const nlohmann::json& j, const std::string& what) {
  // An unsupported architecture is named before any of its keys is judged; a malformed
  // "architectures" is parse_common_config's error.
  const Architecture* a = nullptr;
  if (j.is_object() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    a = &find_architecture(j["architectures"][0].get<std::string>(), what);
  ModelConfig c = parse_common_config(j, what);
  GALE_ASSERT(a);
  try {
    a->configure(ConfigReader{j, what}, c);
  } catch (const nlohmann::json::exception& e) {  // a value of the wrong JSON type deep inside
    throw Error(what + ": " + e.what());
  }
  return c;
}

ModelConfig load_model_config(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path p = fs::path(model_dir) / "config.json";
  if (!fs::is_directory(model_dir)) throw Error("model directory not found: " + model_dir);
  if (!fs::exists(p)) throw Error("no config.json in " + model_dir);
  return parse_model_config(read_config_file(p.string()), p.string());
}

}  // namespace gale
