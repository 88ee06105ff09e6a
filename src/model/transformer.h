// The decoder-only transformer of every supported architecture (Llama, Mistral, Qwen2,
// Qwen3, Mixtral), written once against the Backend interface (CPU or CUDA). Features are
// switched by the config: q/k/v biases, q/k norm, sliding windows, MoE feed-forward, tied
// embeddings.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "loader/model_config.h"
#include "model/backend.h"
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
  // Length "dynamic" RoPE computes its frequencies for (at least start_pos + tokens.size()).
  // A chunked prompt passes the whole prompt's length, so every chunk rotates as the single
  // forward of transformers does; 0 = start_pos + tokens.size().
  int64_t rope_len = 0;
};

class Transformer {
 public:
  // backend nullptr: the CPU backend with activations `act`.
  Transformer(ModelConfig cfg, ModelWeights w, ActDType act = ActDType::F32, std::unique_ptr<Backend> backend = {});
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  ActDType act_dtype() const { return act_; }
  // How the KV caches this model reads and writes store K/V (model/kv_cache.h): the backend's
  // kv_dtype() until set_kv_dtype. Make caches with KVCache(config(), n, bs, kv_format(), &backend()).
  const KVFormat& kv_format() const { return kv_format_; }
  DType kv_dtype() const { return kv_format_.dtype; }
  // Stores K/V as dtype from now on (F32, BF16 or F8_E4M3); gale::Error naming the backend when
  // its attention cannot (Backend::supports_kv). F8_E4M3 takes the checkpoint's k_scale /
  // v_scale where every layer has both, else scales calibrated once, here (ARCHITECTURE.md,
  // "FP8 KV cache"). Caches made for the old format may not be used afterwards.
  void set_kv_dtype(DType dtype);
  // Where the F8_E4M3 scales came from: "checkpoint" or "calibrated" ("" for other dtypes).
  const std::string& kv_scale_source() const { return kv_scale_source_; }
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }

  // Runs all new tokens of all sequences in one pass, writing their K/V into `kv` (which must
  // live in this model's backend: construct it with &backend()).
  // logits: rows in sequence order, one per requested position, [rows, vocab].
  // Throws gale::Error for token ids outside the vocabulary.
  void forward(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>& logits);
  // The same pass, returning only each logit row's argmax (greedy decoding): on a GPU the
  // logits stay on the device.
  void forward_argmax(std::span<const SeqStep> seqs, KVCache& kv, std::vector<int32_t>& ids);
  // The same pass, returning the id drawn from each logit row with rows[i] (one per logit row,
  // in order), where backend().has_sample_rows(): the logits stay on the device.
  void forward_sample(std::span<const SeqStep> seqs, KVCache& kv, std::span<const RowSampling> rows,
                      std::vector<int32_t>& ids);

  // forward_argmax / forward_sample in two halves: the launch queues the pass and returns (on a
  // GPU, while the device runs it); wait_ids() blocks until the ids are on the host. seqs,
  // their tokens and block tables, and rows' penalty lists may change once the launch returned
  // (the step's plan was packed by then); the KV cache and the model may not be used before
  // wait_ids(). The CPU backend computes everything in the launch.
  void launch_argmax(std::span<const SeqStep> seqs, KVCache& kv);
  void launch_sample(std::span<const SeqStep> seqs, KVCache& kv, std::span<const RowSampling> rows);
  void wait_ids(std::vector<int32_t>& ids);
  bool launched() const { return launched_rows_ >= 0; }

 private:
  // Backend memory grown on demand and reused across steps (no per-token allocations).
  struct Buffer {
    void* p = nullptr;
    size_t bytes = 0;
  };
  Act buffer(Buffer& b, int64_t rows, int64_t cols, DType dt);
  // The pass up to the logits: returns them in backend memory (CPU: in *host when given).
  Act run(std::span<const SeqStep> seqs, KVCache& kv, std::vector<float>* host);
  void build_plan(std::span<const SeqStep> seqs, int64_t T, int64_t block_size);
  // Per-layer K and V scales for an E4M3 cache, measured on a calibration forward.
  void calibrate_kv_scales(std::vector<float>& k_scale, std::vector<float>& v_scale);
  // Every layer of the model (of this pipeline stage) over x_'s T rows.
  void layers(int64_t T, KVCache& kv);
  // Final norm and LM head of the gathered logit rows (rows, normed: scratch) into out.
  void logits_from(Act rows, Act normed, Act out);
  void attention_block(int64_t layer, KVCache& kv, int64_t T);
  void mlp_block(const LayerWeights& L);
  void moe_block(const LayerWeights& L, int64_t T);
  // Where the backend has partial residuals (Backend::partial_residuals): the block's output
  // goes to this zeroed scratch, then reduce_add adds it into x_.
  Act zeroed_partial();

  ModelConfig cfg_;
  ModelWeights w_;
  ActDType act_;
  KVFormat kv_format_;
  std::string kv_scale_source_;
  int64_t rot_dim_;
  std::unique_ptr<Backend> backend_;
  StepPlan plan_;
  Act x_, xn_;  // the residual stream (f32) and its normed copy, [T, hidden]
  Buffer bx_, bxn_, bqkv_, battn_, bgu_, brouter_, bmoe_ws_, bpartial_, blogit_x_, blogit_n_, blogits_,
      blogits_part_;  // this rank's logit columns (a vocabulary-parallel LM head)
  int64_t launched_rows_ = -1;  // ids a launch owes wait_ids(); -1: nothing launched
  std::vector<int64_t> pos_;
};

}  // namespace gale
