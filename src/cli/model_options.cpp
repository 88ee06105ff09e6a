#include "cli/model_options.h"

namespace gale::cli {

void add_model_options(CLI::App* sub, ModelOptions& o, bool dtype) {
  sub->add_option("-m,--model", o.model, "Model folder (config.json, *.safetensors, tokenizer.json) or synthetic:NAME");
  if (dtype) {
    sub->add_option("--dtype", o.dtype, "Activation dtype: f32 or bf16 (default: f32 on the CPU, bf16 on a GPU)")
        ->check(CLI::IsMember({"f32", "bf16"}));
    sub->add_option("--device", o.device, "Where the model runs: cpu, cuda or cuda:N (default: cuda when a GPU is present)");
    sub->add_option("--gpu-memory-utilization", o.gpu_memory_utilization,
                    "Share of the GPU's memory for weights, activations and KV cache (default 0.9)")
        ->check(CLI::Range(0.01, 1.0));
  }
  sub->add_option("--quantization", o.quantization,
                  "Weights as loaded: none (as stored), fp8 (E4M3 with per-channel scales), int8 (INT8 with "
                  "per-channel scales, symmetric) or int4 (4-bit, groups of 128 with zero points), quantized at "
                  "load; the LM head and MoE routers stay as stored")
      ->check(CLI::IsMember({"none", "fp8", "int8", "int4"}));
  sub->add_option("--quantization-group", o.quantization_group,
                  "int8 / int4: input columns per scale, a multiple of 32 (default: per channel for int8, 128 for "
                  "int4)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--quantize-lm-head", o.quantize_lm_head,
                "With --quantization fp8, int8 or int4: quantize the LM head too, the same way (a copy of its own "
                "when tied to the embedding table): fewer bytes per decoded token, at a quality cost `gale eval` "
                "measures");
  add_keep_16bit_option(sub, o.keep_16bit);
  sub->add_option("--kv-cache-dtype", o.kv_cache_dtype,
                  "KV cache storage: auto (f32 on the CPU with f32 activations, else bf16; fp8 for a checkpoint "
                  "with KV cache scales), bf16, or fp8 (E4M3 with per-layer K and V scales: the checkpoint's, "
                  "else calibrated at load; half the bytes of bf16 per token)")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  sub->add_option("--threads", o.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
}

void add_keep_16bit_option(CLI::App* sub, std::vector<std::string>& patterns) {
  sub->add_option("--keep-16bit", patterns,
                  "Keep the layer matrices whose checkpoint name matches PATTERN as stored instead of quantizing "
                  "them (repeatable): a glob over the module or tensor name ('model.layers.0.*', '*.down_proj'), "
                  "or 're:REGEX' matched at the start of the module name, as compressed-tensors' ignore lists")
      ->type_name("PATTERN")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

}  // namespace gale::cli
