// The CPU backend: activations in f32 host memory (rounded to bf16 between ops with
// `--dtype bf16`), the kernels of kernels/cpu, weights read in place from the mapped checkpoint.
#pragma once
#include <vector>

#include "model/backend.h"

namespace gale {

// Not final: tests derive a CPU backend that samples in sample_rows (the GPU's engine path).
class CpuBackend : public Backend {
 public:
  explicit CpuBackend(bool bf16_activations) : bf16_(bf16_activations) {}
  std::string name() const override { return "cpu"; }
  bool is_cpu() const override { return true; }
  DType act_dtype() const override { return DType::F32; }
  DType kv_dtype() const override { return bf16_ ? DType::BF16 : DType::F32; }
  // Any of F32, BF16 and F8_E4M3, whatever the activations (kernels/cpu paged_attention).
  bool supports_kv(DType dtype) const override {
    return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F8_E4M3;
  }

  void* alloc(size_t bytes) override;
  void release(void* p, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  bool supports(const Linear& l) const override;
  void prepare(const ModelConfig&, const ModelWeights&) override {}  // weights are read in place
  void begin_step(const StepPlan& plan) override { plan_ = &plan; }

  void embedding(const ModelWeights& w, Act out) override;
  void rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) override;
  void head_rmsnorm(Act x, int64_t n_heads, const std::vector<float>& w, float eps) override;
  void linear(const Linear& l, Act in, Act out, bool accumulate) override;
  void linear_fused(std::span<const Linear* const> ls, Act in, Act out) override;
  void rope(Act q, int64_t n_q_heads, Act k, int64_t n_k_heads, int64_t head_dim) override;
  void attention(const KVLayer& kv, Act q, Act k, Act v, int64_t n_heads, int64_t window, float scale,
                 Act out) override;
  void fill_zero(Act x) override;
  void reduce_add(Act partial, Act x) override;  // one rank: x += partial
  void silu_mul(Act gate, Act up) override;
  void round_act(Act x) override;
  void gather_rows(Act src, std::span<const int32_t> rows, Act dst) override;
  void gather_logit_rows(Act src, Act dst) override;
  void scatter_add_rows(Act src, std::span<const int32_t> rows, std::span<const float> weight, Act dst) override;
  void to_host(Act src, float* dst) override;
  void argmax_rows(Act logits, int32_t* out) override;

 private:
  bool bf16_;
  const StepPlan* plan_ = nullptr;
  std::vector<float> gathered_;  // [rows, in]: x's columns in an act-order matrix's in_perm order
};

}  // namespace gale
