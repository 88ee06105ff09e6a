// The decoder-only transformer of every supported architecture (Llama, Mistral, Qwen2,
// Qwen3, Mixtral), written once against the CPU kernels. Features are switched by the config:
// q/k/v biases, q/k norm, sliding windows, MoE feed-forward, tied embeddings.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "loader/model_config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace gale {

enum class ActDType { F32, BF16 };

// One sequence's share of a forward step.
struct SeqStep {
  std::span<const int32_t> tokens;       // the new tokens
  int64_t start_pos = 0;                 // position of tokens[0] (= tokens already cached)
  std::span<const int32_t> block_table;  // blocks covering start_pos + tokens.size() positions
  enum class Logits { None, Last, All } logits = Logits::Last;
};

class Transformer {
 public:
  Transformer(ModelConfig cfg, ModelWeights w, ActDType act = ActDType::F32);

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  ActDType act_dtype() const { return act_; }
  DType kv_dtype() const { return act_ == ActDType::BF16 ? DType::BF16 : DType::F32; }

  // Runs all new tokens of all sequences in one pass, writing their K/V into `kv`.
  // logits: rows in sequence order, one per requested position, [rows, vocab].
  // Throws gale::Error for token ids outside the vocabulary.
  void forward(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>& logits);

 private:
  void attention_block(int64_t layer, std::span<const SeqStep> seqs, KVCache& kv, int64_t T);
  void mlp_block(const LayerWeights& L, int64_t T);
  void moe_block(const LayerWeights& L, int64_t T);

  ModelConfig cfg_;
  ModelWeights w_;
  ActDType act_;
  int64_t rot_dim_;
  // Scratch, grown on demand and reused across steps (no per-token allocations).
  std::vector<float> x_, xn_, q_, k_, v_, attn_, gate_, up_, cos_, sin_, tmp_;
  std::vector<int64_t> pos_;
};

}  // namespace gale
