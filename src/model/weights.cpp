#include "model/weights.h"

#include "loader/checkpoint_check.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/weight_binder.h"

namespace gale {

namespace {

// The tensors every architecture shares (embedding, final norm, LM head) around its layers.
ModelWeights bind_with(TensorBinder& b, const ModelConfig& c) {
  const Architecture& arch = find_architecture(c.architecture);
  ModelWeights w;
  const int64_t H = c.hidden_size;
  const TensorInfo& emb = b.tensor("model.embed_tokens.weight", {c.vocab_size, H});
  w.embed = emb.data;
  w.embed_dtype = emb.dtype;
  w.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i)
    arch.bind_layer(b, c, "model.layers." + std::to_string(i) + ".", w.layers[size_t(i)]);
  w.final_norm = b.vec("model.norm.weight", H);
  if (c.tie_word_embeddings && !b.has("lm_head.weight")) {
    w.lm_head = Linear{emb.data, emb.dtype, c.vocab_size, H, {}};
  } else {
    w.lm_head = b.linear("lm_head", c.vocab_size, H, false);
  }
  return w;
}

}  // namespace

ModelWeights bind_weights(std::shared_ptr<const SafeTensors> stp, const ModelConfig& c) {
  const SafeTensors& st = *stp;
  // The counts first: the layer and expert arrays below are sized from them.
  check_config_against_checkpoint(c, st);
  TensorBinder b(&st);
  ModelWeights w = bind_with(b, c);
  check_unbound_tensors(st, b.bound());
  w.total_bytes = b.bytes();
  w.dtypes.assign(b.dtypes().begin(), b.dtypes().end());
  w.storage = std::move(stp);
  return w;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_layout(const ModelConfig& c) {
  TensorBinder b(nullptr);
  bind_with(b, c);
  return b.requested();
}

}  // namespace gale
