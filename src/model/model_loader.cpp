#include "model/model_loader.h"

#include "loader/safetensors.h"
#include "model/synthetic.h"

namespace gale {

LoadedModel load_model(const std::string& path, ActDType act) {
  BackendOptions o;
  o.bf16_activations = act == ActDType::BF16;
  return load_model(path, o);
}

LoadedModel load_model(const std::string& path, const BackendOptions& bo) {
  const ActDType act = bo.bf16_activations || bo.device != "cpu" ? ActDType::BF16 : ActDType::F32;
  std::unique_ptr<Backend> backend = make_backend(bo);  // a bad --device fails before any loading
  LoadedModel m;
  m.source = path;
  static const std::string kSynthetic = "synthetic:";
  if (path.rfind(kSynthetic, 0) == 0) {
    ModelConfig cfg = synthetic_config(path.substr(kSynthetic.size()));
    m.synthetic = true;
    m.model = std::make_unique<Transformer>(cfg, synthetic_weights(cfg), act, std::move(backend));
    return m;
  }
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  m.model = std::make_unique<Transformer>(cfg, bind_weights(st, cfg), act, std::move(backend));
  return m;
}

}  // namespace gale
