// libFuzzer: arbitrary bytes as config.json and generation_config.json, read as the loader reads
// them (nesting bounded before parsing).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"
#include "loader/model_config.h"
#include "model/arch/arch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = gale::parse_config_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const gale::Error&) {
    return 0;
  }
  try {
    gale::ModelConfig c = gale::parse_model_config(j, "fuzz");
    gale::parse_generation_config(j, c, "fuzz");
  } catch (const gale::Error&) {
  } catch (const nlohmann::json::exception&) {
    // A type mismatch inside a valid config field surfaces as a json exception; both are
    // reported to the user as one error line by the CLI.
  }
  return 0;
}
