// MixtralForCausalLM: Mistral's attention, and in place of the MLP a softmax-routed top-k
// mixture of SwiGLU experts (block_sparse_moe: gate = router, w1 / w3 / w2 = gate / up / down),
// whose top-k weights are always renormalized.
#include "model/arch/arch.h"
#include "model/arch/blocks.h"

namespace gale {

namespace {

void configure(const ConfigReader& r, ModelConfig& c) {
  window_all_layers(r, c);
  c.num_experts = r.positive("num_local_experts", kMaxExperts);
  c.num_experts_per_tok = r.positive("num_experts_per_tok", kMaxExperts);
  if (c.num_experts_per_tok > c.num_experts) r.fail("num_experts_per_tok", "exceeds num_local_experts");
  c.norm_topk_prob = true;
}

void bind_layer(TensorBinder& b, const ModelConfig& c, const std::string& p, LayerWeights& L) {
  bind_norms(b, c, p, L);
  bind_attention(b, c, p, L);
  bind_moe(b, c, p, {"block_sparse_moe", "gate", "w1", "w2", "w3"}, L);
}

}  // namespace

const Architecture& mixtral_architecture() {
  static const Architecture a{{"MixtralForCausalLM"}, configure, bind_layer, "block_sparse_moe.experts."};
  return a;
}

}  // namespace gale
