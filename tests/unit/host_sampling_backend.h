// The CPU backend with the GPU's engine path, for engine tests: the engine hands each sampled
// row's parameters, uniform and penalty lists to sample_rows and only gets ids back
// (Sampler::sample's own code), so sampled steps are launched ahead as on a GPU.
#pragma once
#include <span>
#include <vector>

#include "model/cpu_backend.h"
#include "runtime/sampler.h"

namespace gale::test {

// Sampler::sample's parameters of a Backend::sample_rows row.
inline SamplingParams sampling_params(const RowSampling& r) {
  SamplingParams p;
  p.temperature = r.temperature;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.min_p = r.min_p;
  p.repetition_penalty = r.repetition_penalty;
  p.presence_penalty = r.presence_penalty;
  p.frequency_penalty = r.frequency_penalty;
  return p;
}

class HostSamplingBackend : public CpuBackend {
 public:
  HostSamplingBackend() : CpuBackend(false) {}
  bool has_sample_rows() const override { return true; }
  void sample_rows(Act logits, std::span<const RowSampling> rows, int32_t* out) override {
    for (int64_t i = 0; i < logits.rows; ++i) {
      const RowSampling& r = rows[size_t(i)];
      std::span<float> row(logits.f32() + i * logits.ld, size_t(logits.cols));
      out[i] = sample_token(sampling_params(r), r.seen_ids, r.output_ids, r.output_counts, r.u, row, idx_);
    }
  }

 private:
  std::vector<int32_t> idx_;
};

}  // namespace gale::test
