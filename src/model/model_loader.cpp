#include "model/model_loader.h"

#include "loader/safetensors.h"
#include "model/synthetic.h"

namespace gale {

LoadedModel load_model(const std::string& path, ActDType act) {
  LoadedModel m;
  m.source = path;
  static const std::string kSynthetic = "synthetic:";
  if (path.rfind(kSynthetic, 0) == 0) {
    ModelConfig cfg = synthetic_config(path.substr(kSynthetic.size()));
    m.synthetic = true;
    m.model = std::make_unique<Transformer>(cfg, synthetic_weights(cfg), act);
    return m;
  }
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  m.model = std::make_unique<Transformer>(cfg, bind_weights(st, cfg), act);
  return m;
}

}  // namespace gale
