#include "model/calibration.h"

#include <algorithm>
#include <memory>

#include "core/error.h"
#include "model/cpu_backend.h"
#include "model/kv_cache.h"
#include "model/transformer.h"

namespace gale {

namespace {

// The CPU backend, keeping every projection's input rows (f32) by the projection's tensor name
// and, when asked, every RMSNorm's input over the hidden size. The fused defaults of Backend
// (rmsnorm_linear, swiglu_linear, swiglu_mlp) all end in rmsnorm / linear / linear_fused, which
// the CPU backend does not fuse further, so every input passes here.
class RecordingBackend : public CpuBackend {
 public:
  RecordingBackend(CalibrationRecord& rec, int64_t hidden, bool norms, const std::set<std::string>& only)
      : CpuBackend(false), rec_(rec), hidden_(hidden), norms_(norms), only_(only) {}

  void linear(const Linear& l, Act in, Act out, bool accumulate) override {
    if (wanted(l)) record(rec_.inputs[l.name], in);
    CpuBackend::linear(l, in, out, accumulate);
  }
  void linear_fused(std::span<const Linear* const> ls, Act in, Act out) override {
    for (const Linear* l : ls)
      if (wanted(*l)) record(rec_.inputs[l->name], in);
    CpuBackend::linear_fused(ls, in, out);
  }
  void rmsnorm(Act in, const std::vector<float>& w, float eps, Act out) override {
    if (norms_ && in.cols == hidden_) {
      if (norm_call_ == rec_.norm_inputs.size()) rec_.norm_inputs.emplace_back();
      record(rec_.norm_inputs[norm_call_++], in);
    }
    CpuBackend::rmsnorm(in, w, eps, out);
  }

 void new_forward() { norm_call_ = 0; }

 private:
  bool wanted(const Linear& l) const { return only_.empty() || only_.count(l.name); }
  static void record(std::vector<float>& v, Act in) {
    GALE_ASSERT(in.dtype == DType::F32);
    const auto* p = static_cast<const float*>(in.data);
    for (int64_t r = 0; r < in.rows; ++r) v.insert(v.end(), p + r * in.ld, p + r * in.ld + in.cols);
  }
  size_t norm_call_ = 0;  // RMSNorm calls of this forward so far
  CalibrationRecord& rec_;
  int64_t hidden_;
  bool norms_;
  const std::set<std::string>& only_;
};

}  // namespace

CalibrationRecord record_calibration(const ModelConfig& cfg, ModelWeights w, std::span<const int32_t> tokens,
                                     int64_t max_tokens, bool norms, const std::set<std::string>& only,
                                     const std::function<void(const CalibrationRecord&)>& on_window) {
  CalibrationRecord rec;
  const int64_t n = std::min<int64_t>(int64_t(tokens.size()), max_tokens);
  if (n < 1) throw Error("calibration needs at least one token");
  rec.rows = n;
  auto backend = std::make_unique<RecordingBackend>(rec, cfg.hidden_size, norms, only);
  RecordingBackend* be = backend.get();
  Transformer m(cfg, std::move(w), ActDType::F32, std::move(backend));
  // Windows of at most 512 tokens (and the context), each a prompt of its own.
  const int64_t window = std::min<int64_t>(512, cfg.max_position_embeddings), bs = 16, nb = (window + bs - 1) / bs;
  std::vector<int32_t> table(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) table[size_t(b)] = int32_t(b);
  KVCache kv(cfg, nb, bs, m.kv_format(), &m.backend());
  std::vector<float> logits;
  for (int64_t start = 0; start < n; start += window) {
    be->new_forward();
    // All logits when the norms are wanted: the final norm runs only over rows whose logits are.
    SeqStep step{tokens.subspan(size_t(start), size_t(std::min(window, n - start))), 0, table,
                 norms ? SeqStep::Logits::All : SeqStep::Logits::None};
    m.forward({&step, 1}, kv, logits);
    if (on_window) {
      rec.rows = int64_t(step.tokens.size());
      on_window(rec);
      rec.inputs.clear();
      rec.norm_inputs.clear();
    }
  }
  rec.rows = n;
  return rec;
}

}  // namespace gale
