// MistralForCausalLM: Llama's layers without biases; the 4.x sliding_window covers every layer.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void configure(const ConfigReader& r, ModelConfig& c) { window_all_layers(r, c); }

}  // namespace

const Architecture& mistral_architecture() {
  static const Architecture a{{"MistralForCausalLM"}, configure, bind_dense_layer};
  return a;
}

}  // namespace gale
