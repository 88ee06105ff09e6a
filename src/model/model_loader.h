// Opens a model by name: a Hugging Face folder or synthetic:NAME.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/backend_factory.h"
#include "model/transformer.h"

namespace gale {

struct LoadedModel {
  std::unique_ptr<Transformer> model;
  std::string source;   // the folder, or "synthetic:NAME"
  bool synthetic = false;
};

// Throws gale::Error (missing files, corrupt checkpoint, unknown architecture, ...).
// The model runs on the CPU with activations `act`.
LoadedModel load_model(const std::string& path_or_synthetic, ActDType act = ActDType::F32);
// What loading does to the weights on their way to the backend (model/transforms.h).
struct LoadOptions {
  // --quantization: "none" (as stored), "fp8" (per-channel FP8 weights, quantized at load;
  // the checkpoint's own FP8 matrices are kept), "int8" (INT8 codes, one scale per channel,
  // symmetric) or "int4" (packed 4-bit codes, groups of 128 with zero points), both by
  // model/int_quantize.h (model/transforms.h quantize_int_weights).
  std::string quantization = "none";
  // --quantization-group: columns per scale for int8 / int4 (a multiple of 32); 0: the
  // scheme's own (int8 per channel, int4 128).
  int64_t quantization_group = 0;
  // --quantize-lm-head: fp8 / int8 / int4 quantize the LM head too (kept as stored otherwise; a
  // tied one gets codes of its own).
  bool quantize_lm_head = false;
  // --keep-16bit: projections whose checkpoint name matches one of these patterns stay as
  // stored under --quantization fp8, int8 or int4 (loader/name_patterns.h: globs, or "re:" regexes).
  std::vector<std::string> keep_16bit;
  // --kv-cache-dtype: "auto" (the backend's own: f32 on the CPU with f32 activations, else
  // bf16; fp8 for a checkpoint with a kv_cache_scheme), "bf16" or "fp8" (E4M3, per-layer K and
  // V scales: the checkpoint's k_scale / v_scale, else calibrated at load).
  std::string kv_cache_dtype = "auto";
};

// The KV dtype --kv-cache-dtype asks for, for this config on this backend (gale::Error for an
// unknown value).
DType resolve_kv_cache_dtype(const std::string& kv_cache_dtype, const ModelConfig& cfg, const Backend& backend);

// The model runs on backend.device (weights uploaded there when it is a GPU).
LoadedModel load_model(const std::string& path_or_synthetic, const BackendOptions& backend,
                       const LoadOptions& load = {});

}  // namespace gale
