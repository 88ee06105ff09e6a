// Options shared by the subcommands that run a model.
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "model/backend_factory.h"
#include "model/model_loader.h"
#include "model/transformer.h"

namespace gale::cli {

struct ModelOptions {
  std::string model;        // -m: folder or synthetic:NAME ("" = the bundled default model)
  std::string dtype;        // "" = f32 on the CPU, bf16 on a GPU
  int threads = 0;          // 0 = all cores
  std::string device;       // --device: "" = cuda when a GPU is present, else cpu
  double gpu_memory_utilization = 0.9;
  std::string quantization = "none";  // --quantization: none, fp8, int8 or int4 (quantize the weights at load)
  int64_t quantization_group = 0;     // --quantization-group: columns per int8 / int4 scale (0: the scheme's)
  bool quantize_lm_head = false;      // --quantize-lm-head: fp8 / int8 / int4 take the LM head too
  std::vector<std::string> keep_16bit;  // --keep-16bit PATTERN (repeatable): projections fp8 leaves as stored
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype: auto, bf16 or fp8
};

void add_model_options(CLI::App* sub, ModelOptions& o, bool dtype = true);
// --keep-16bit PATTERN, repeatable (one pattern per occurrence); also `gale quantize`'s.
void add_keep_16bit_option(CLI::App* sub, std::vector<std::string>& patterns);
// Resolves the model path (default model when -m is absent), applies --threads.
std::string resolve_model(const ModelOptions& o);
ActDType parse_act_dtype(const std::string& s);
// The backend the flags ask for (--device, --dtype, --gpu-memory-utilization); throws
// gale::Error for combinations the backend cannot run (--dtype f32 on a GPU).
BackendOptions backend_options(const ModelOptions& o);
// What loading does to the weights (--quantization, --keep-16bit) and the KV cache's dtype (--kv-cache-dtype).
LoadOptions load_options(const ModelOptions& o);

}  // namespace gale::cli
