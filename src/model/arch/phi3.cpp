// Phi3ForCausalLM: Llama's blocks with fused projections (self_attn.qkv_proj holds q, k and v
// row after row; mlp.gate_up_proj holds gate then up), bound as views into the fused tensors
// without a copy; no biases; the 4.x sliding_window covers every layer.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void configure(const ConfigReader& r, ModelConfig& c) { window_all_layers(r, c); }

void bind_layer(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  bind_norms(b, c, p, L);
  bind_fused_attention(b, c, p, "qkv_proj", L);
  bind_fused_mlp(b, c, p, "gate_up_proj", L);
}

}  // namespace

const Architecture& phi3_architecture() {
  static const Architecture a{{"Phi3ForCausalLM"}, configure, bind_layer};
  return a;
}

}  // namespace gale
