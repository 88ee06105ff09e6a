// Helpers shared by the unit tests.
#pragma once
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gale::test {

inline std::string fixtures_dir() { return GALE_FIXTURES_DIR; }

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Every model fixture folder (tests/fixtures/models/<arch>-<dtype>).
inline std::vector<std::string> model_fixture_names() {
  std::vector<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(fixtures_dir() + "/models"))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json"))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace gale::test
