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
//   awq (AutoAWQ, `version: "gemm"`): 4-bit, `<module>.qweight` I32 [in, out / 8], `qzeros` I32
//     [in / group, out / 8], `scales` F16 [in / group, out]; each int32 holds 8 output columns
//     in the nibble order 0, 2, 4, 6, 1, 3, 5, 7; weight = (q − z) · s; `modules_to_not_convert`.
//   gptq (AutoGPTQ / GPTQModel): 4 or 8 bits, `qweight` I32 [in · bits / 32, out] packed along
//     the input dim, `qzeros` I32 [groups, out · bits / 32], `scales` F16 [groups, out], `g_idx`
//     I32 [in] (the group of each input; act-order when desc_act); checkpoint_format "gptq"
//     (v1) stores each zero point minus one, "gptq_v2" as is.
//   compressed-tensors pack-quantized: `weight_packed` I32 [out, in · bits / 32] (value + 2^(bits-1)
//     as unsigned, sequential along the input dim), `weight_scale` [out, groups], optional
//     `weight_zero_point` (packed I32 [out · bits / 32, groups] along the output dim, or I8
//     [out, groups]) and `weight_g_idx`, `weight_shape` [2]; int-quantized: I8 `weight`
//     [out, in] with `weight_scale`; strategies channel and group.
// Integer formats are repacked at load into the one layout of model/weights.h's WeightScheme
// (model/int_checkpoint.h).
//
// The stored tensors decide per module: an FP8 weight must come with its scale, a 16-bit one
// must not have one; a module with an integer format's tensors is quantized, one with a plain
// `weight` is not (model/weight_binder.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace gale {

struct ConfigReader;

struct QuantConfig {
  enum class Format { None, CompressedTensorsFp8, Fp8, Awq, Gptq, CompressedTensorsInt };
  enum class Granularity { Tensor, Channel, Block };
  Format format = Format::None;
  Granularity weights = Granularity::Tensor;
  int64_t block = 0;                  // Block: the side of a square block of weights
  bool static_input_scales = false;   // per-module input_scale tensors (static activations)
  bool kv_scales = false;             // per-layer k_scale / v_scale tensors
  std::vector<std::string> ignore;    // modules kept in 16 bits, as the config lists them
  // Integer formats (Awq, Gptq, CompressedTensorsInt):
  int bits = 0;                       // 4 or 8
  int64_t group = 0;                  // input columns per scale; 0: one scale per output channel
  bool symmetric = true;              // false: zero points per scale
  bool act_order = false;             // GPTQ desc_act / compressed-tensors actorder "group"
  bool gptq_v1_zeros = false;         // GPTQ checkpoint_format "gptq": stored zero points are z − 1
  bool packed = false;                // compressed-tensors pack-quantized (else int-quantized)

  bool quantized() const { return format != Format::None; }
  bool integer() const { return format == Format::Awq || format == Format::Gptq || format == Format::CompressedTensorsInt; }
  // The scale tensor's suffix after "<module>.": "weight_scale" or "weight_scale_inv".
  const char* scale_suffix() const { return format == Format::Fp8 ? "weight_scale_inv" : "weight_scale"; }
  // "compressed-tensors FP8, per-channel weights, dynamic activations", "GPTQ 4-bit, groups of
  // 128, symmetric, act-order" (for `gale info`).
  std::string describe() const;
};

// r is config.json at the top level; an absent or null quantization_config is Format::None.
// Throws gale::Error naming the key and what is not supported.
QuantConfig parse_quant_config(const ConfigReader& r);

}  // namespace gale
