// Architectures: one file per family (llama.cpp, mistral.cpp, qwen.cpp, mixtral.cpp, phi3.cpp)
// owns what sets it apart: its config.json keys, its Hugging Face tensor names and the blocks
// its layers are made of, composed from the shared builders of blocks.h. The transformer
// (model/transformer.cpp) runs whatever the description filled in; `synthetic:` models lay
// out their tensors from the same binding. Adding a Llama-like architecture is one file here
// and one line in registry.cpp.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "loader/config_reader.h"
#include "loader/model_config.h"
#include "model/weight_binder.h"

namespace gale {

struct Architecture {
  std::vector<std::string> names;  // config.json "architectures" values it serves
  // Reads the family's own keys into c, after the common ones (loader/model_config.h).
  void (*configure)(const ConfigReader& r, ModelConfig& c);
  // Binds layer `layer`'s tensors (names under `prefix` = "model.layers.<i>.").
  void (*bind_layer)(TensorBinder& b, const ModelConfig& c, const std::string& prefix, LayerWeights& L);
  // MoE families: the experts' names under a layer ("block_sparse_moe.experts."), whose count
  // is checked against num_local_experts before anything is sized (loader/checkpoint_check.h).
  const char* experts_prefix = "";
};

// Each family's description (defined in its file).
const Architecture& llama_architecture();
const Architecture& mistral_architecture();
const Architecture& qwen2_architecture();
const Architecture& qwen3_architecture();
const Architecture& mixtral_architecture();
const Architecture& phi3_architecture();

// The description serving config.json's architecture `name`; throws gale::Error listing the
// supported names (`what` names the file in the message).
const Architecture& find_architecture(const std::string& name, const std::string& what = "config.json");
// Every supported "architectures" name.
const std::vector<std::string>& supported_architectures();

// config.json read whole: the common keys, then the architecture's own. Throws gale::Error
// naming the key and the problem (`what` names the file in messages).
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& what = "config.json");
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace gale
