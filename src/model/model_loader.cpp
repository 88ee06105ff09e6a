#include "model/model_loader.h"

#include "core/error.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/kv_cache.h"
#include "model/synthetic.h"
#include "model/transforms.h"

namespace gale {

LoadedModel load_model(const std::string& path, ActDType act) {
  BackendOptions o;
  o.bf16_activations = act == ActDType::BF16;
  return load_model(path, o);
}

namespace {

// A GPU loads kernel modules, creates cuBLASLt's state and picks GEMM algorithms on first use:
// one short prefill and a few decode steps at load time keep that out of the first request's
// time to first token (vLLM warms up the same way).
void warm_up(Transformer& m) {
  const int64_t bs = 16, n = 16;
  KVCache kv(m.config(), 2, bs, m.kv_format(), &m.backend());
  std::vector<int32_t> prompt(size_t(n), 0), table = {0, 1};
  std::vector<int32_t> next;
  SeqStep s{prompt, 0, table, SeqStep::Logits::Last};
  m.forward_argmax({&s, 1}, kv, next);
  for (int64_t i = 0; i < 2; ++i) {
    SeqStep d{std::span<const int32_t>(next.data(), 1), n + i, table, SeqStep::Logits::Last};
    m.forward_argmax({&d, 1}, kv, next);
  }
}

}  // namespace

namespace {

// The transforms the load options ask for, in order (identity when none).
std::vector<WeightTransform> transforms_for(const LoadOptions& o) {
  const bool none = o.quantization == "none" || o.quantization.empty();
  const bool integer = o.quantization == "int8" || o.quantization == "int4";
  if (none && !o.keep_16bit.empty())
    throw Error("--keep-16bit applies to --quantization fp8, int8 or int4 (the weights are loaded as stored without it)");
  if (!integer && o.quantization_group != 0)
    throw Error("--quantization-group applies to --quantization int8 or int4");
  if (none && o.quantize_lm_head)
    throw Error("--quantize-lm-head applies to --quantization fp8, int8 or int4 (the weights are loaded as stored without it)");
  if (none) return {identity_transform()};
  const NamePatterns keep(o.keep_16bit, "--keep-16bit");
  if (o.quantization == "fp8") return {quantize_fp8_per_channel(keep, o.quantize_lm_head)};
  if (integer) {
    if (o.quantization_group < 0 || o.quantization_group % 32 != 0)
      throw Error("--quantization-group must be a positive multiple of 32 (got " +
                  std::to_string(o.quantization_group) + ")");
    IntQuantSpec spec;
    spec.bits = o.quantization == "int8" ? 8 : 4;
    spec.symmetric = spec.bits == 8;
    spec.group = o.quantization_group ? o.quantization_group : spec.bits == 8 ? 0 : 128;
    return {quantize_int_weights(spec, keep, o.quantize_lm_head)};
  }
  throw Error("--quantization must be none, fp8, int8 or int4 (got '" + o.quantization + "')");
}

void check_kv_cache_dtype(const std::string& s) {
  if (s != "auto" && s != "bf16" && s != "fp8" && !s.empty())
    throw Error("--kv-cache-dtype must be auto, bf16 or fp8 (got '" + s + "')");
}

// The KV format, then the GPU's warm-up (which runs in it).
void finish_load(Transformer& m, const LoadOptions& lo) {
  m.set_kv_dtype(resolve_kv_cache_dtype(lo.kv_cache_dtype, m.config(), m.backend()));
  if (!m.backend().is_cpu()) warm_up(m);
}

}  // namespace

DType resolve_kv_cache_dtype(const std::string& s, const ModelConfig& cfg, const Backend& backend) {
  if (s == "auto" || s.empty()) return cfg.quant.kv_scales ? DType::F8_E4M3 : backend.kv_dtype();
  check_kv_cache_dtype(s);
  return s == "bf16" ? DType::BF16 : DType::F8_E4M3;
}

LoadedModel load_model(const std::string& path, const BackendOptions& bo, const LoadOptions& lo) {
  std::vector<WeightTransform> transforms = transforms_for(lo);  // a bad option fails before loading
  if (bo.tp && bo.tp->size() > 1) {
    // This rank's shard first (views of the mapping), its strided row-parallel views packed
    // (copies of the shard only), then any quantization over the shard.
    transforms.insert(transforms.begin(), {shard_tensor_parallel(bo.tp->rank(), bo.tp->size()), pack_rows()});
  }
  if (bo.pp && bo.pp->size() > 1)
    transforms.insert(transforms.begin(), split_pipeline_layers(bo.pp->rank(), bo.pp->size()));
  check_kv_cache_dtype(lo.kv_cache_dtype);
  const ActDType act = bo.bf16_activations || bo.device != "cpu" ? ActDType::BF16 : ActDType::F32;
  std::unique_ptr<Backend> backend = make_backend(bo);  // a bad --device fails before any loading
  LoadedModel m;
  m.source = path;
  static const std::string kSynthetic = "synthetic:";
  if (path.rfind(kSynthetic, 0) == 0) {
    ModelConfig cfg = synthetic_config(path.substr(kSynthetic.size()));
    m.synthetic = true;
    ModelWeights w = synthetic_weights(cfg);
    apply_transforms(transforms, cfg, w);
    m.model = std::make_unique<Transformer>(cfg, std::move(w), act, std::move(backend));
    finish_load(*m.model, lo);
    return m;
  }
  // The loading pipeline: the architecture's description, the weights bound with their
  // schemes, the transforms, then the backend's check and prepare (in the Transformer).
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  ModelWeights w = bind_weights(st, cfg);
  apply_transforms(transforms, cfg, w);
  m.model = std::make_unique<Transformer>(cfg, std::move(w), act, std::move(backend));
  finish_load(*m.model, lo);
  return m;
}

}  // namespace gale
