// Opens a model by name: a Hugging Face folder or synthetic:NAME.
#pragma once
#include <memory>
#include <string>

#include "model/backend_factory.h"
#include "model/transformer.h"

namespace gale {

struct LoadedModel {
  std::unique_ptr<Transformer> model;
  std::string source;   // the folder, or "synthetic:NAME"
  bool synthetic = false;
};

// Throws gale::Error (missing files, corrupt checkpoint, unknown architecture, ...).
// The model runs on the CPU with activations `act`.
LoadedModel load_model(const std::string& path_or_synthetic, ActDType act = ActDType::F32);
// The model runs on backend.device (weights uploaded there when it is a GPU).
LoadedModel load_model(const std::string& path_or_synthetic, const BackendOptions& backend);

}  // namespace gale
