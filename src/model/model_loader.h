// Opens a model by name: a Hugging Face folder or synthetic:NAME.
#pragma once
#include <memory>
#include <string>

#include "model/transformer.h"

namespace gale {

struct LoadedModel {
  std::unique_ptr<Transformer> model;
  std::string source;   // the folder, or "synthetic:NAME"
  bool synthetic = false;
};

// Throws gale::Error (missing files, corrupt checkpoint, unknown architecture, ...).
LoadedModel load_model(const std::string& path_or_synthetic, ActDType act = ActDType::F32);

}  // namespace gale
