// LlamaForCausalLM: attention (biases with attention_bias) and a SwiGLU MLP (biases with
// mlp_bias); sliding windows only through layer_types.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void configure(const ConfigReader& r, ModelConfig& c) {
  read_attention_bias(r, c);
  c.mlp_bias = r.boolean_or("mlp_bias", false);
}

}  // namespace

const Architecture& llama_architecture() {
  static const Architecture a{{"LlamaForCausalLM"}, configure, bind_dense_layer};
  return a;
}

}  // namespace gale
