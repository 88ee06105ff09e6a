// How a checkpoint's weights are quantized: config.json's `quantization_config`, for the
// formats Gale loads. A format not listed here is refused by name, because binding only the
// stored values of a quantized checkpoint would run silently wrong.
//
//   compressed-tensors, float-quantized (llm-compressor's FP8 checkpoints): E4M3 weights with
//     `<module>.weight_scale` per tensor, per output channel or per block; activations
//     dynamic per token or static per tensor (`<module>.input_scale`); `ignore` lists the
//     modules left in 16 bits; an optional kv_cache_scheme brings `self_attn.k_scale` /
//     `v_scale`.
//   fp8 (transformers' fine-grained FP8, DeepSeek-V3 / Qwen3-FP8): E4M3 weights with
//     `<module>.weight_scale_inv`, one per weight_block_size block (or one per tensor without
//     a block size), multiplied in despite the name; `modules_to_not_convert` left in 16 bits.
//
// The stored tensors decide per module: an FP8 weight must come with its scale, a 16-bit one
// must not have one (model/weight_binder.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace gale {

struct ConfigReader;

struct QuantConfig {
  enum class Format { None, CompressedTensorsFp8, Fp8 };
  enum class Granularity { Tensor, Channel, Block };
  Format format = Format::None;
  Granularity weights = Granularity::Tensor;
  int64_t block = 0;                  // Block: the side of a square block of weights
  bool static_input_scales = false;   // per-module input_scale tensors (static activations)
  bool kv_scales = false;             // per-layer k_scale / v_scale tensors
  std::vector<std::string> ignore;    // modules kept in 16 bits, as the config lists them

  bool quantized() const { return format != Format::None; }
  // The scale tensor's suffix after "<module>.": "weight_scale" or "weight_scale_inv".
  const char* scale_suffix() const { return format == Format::Fp8 ? "weight_scale_inv" : "weight_scale"; }
  // "compressed-tensors FP8, per-channel weights, dynamic activations" (for `gale info`).
  std::string describe() const;
};

// r is config.json at the top level; an absent or null quantization_config is Format::None.
// Throws gale::Error naming the key and what is not supported.
QuantConfig parse_quant_config(const ConfigReader& r);

}  // namespace gale
