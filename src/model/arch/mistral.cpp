// MistralForCausalLM: Llama's layers without biases; the 4.x sliding_window covers every layer.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void configure(const ConfigReader& r, ModelConfig& c) { window_all_layers(r, c); }

void bind_layer(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  bind_norms(b, c, p, L);
  bind_attention(b, c, p, L);
  bind_mlp(b, c, p, L);
}

}  // namespace

const Architecture& mistral_architecture() {
  static const Architecture a{{"MistralForCausalLM"}, configure, bind_layer};
  return a;
}

}  // namespace gale
