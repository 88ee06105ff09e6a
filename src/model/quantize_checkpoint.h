// `gale quantize`: a 16/32-bit Hugging Face checkpoint folder rewritten as an FP8 or INT8 / INT4
// one that transformers, vLLM and Gale load as published checkpoints (loader/quant_config.h).
// --format int8 | int4 rounds to nearest with model/int_quantize.h (the quantizer
// --quantization int8|int4 uses at load) and writes a layout of model/int_checkpoint_writer.h:
// INT8 per channel, symmetric; INT4 in groups of 128 with zero points (--group, --symmetric);
// compressed-tensors pack-quantized by default, --layout int-quantized (INT8) or awq (INT4);
// --awq searches activation-aware scales first (model/awq_search.h) and writes an ordinary INT4
// checkpoint with the scales folded into the norms and preceding matrices.
// --format fp8:
//   --scheme channel   compressed-tensors float-quantized, one f32 `weight_scale` [out, 1] per
//                      output channel, dynamic per-token activations (llm-compressor's
//                      FP8_DYNAMIC scheme); the same codes and scales --quantization fp8 makes
//                      at load (model/fp8_quantize.h), so both give the same logits;
//   --scheme tensor    compressed-tensors float-quantized, one `weight_scale` [1] per matrix,
//                      dynamic per-token activations (no calibration data, so no static scales);
//   --scheme block128  transformers' fine-grained `fp8` (DeepSeek-V3 / Qwen3-FP8 layout), one f32
//                      `weight_scale_inv` per 128 x 128 block: [ceil(out/128), ceil(in/128)].
// What is quantized is what the architecture binds as a layer projection (model/arch/,
// for_each_projection): never guessed from names. Everything else (embeddings, norms, biases,
// the LM head, MoE routers, matrices --keep-16bit names) is copied byte for byte (except, with
// --awq, the RMSNorm weights and up / v biases its scales are divided into), and the kept
// matrices are listed in `ignore` / `modules_to_not_convert`.
//
// The output is streamed: the source stays mapped, each safetensors file's header is written
// from the plan, then each tensor in turn (a quantized matrix's codes are the only converted
// copy held). It is written into "<out>.partial-<pid>" beside --out and renamed to --out only
// once complete and loadable, so an interrupted run leaves no half checkpoint at --out.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace gale {

struct QuantizeOptions {
  std::string source;                 // -m: a folder with config.json and 16/32-bit *.safetensors
  std::string out;                    // --out
  std::string format = "fp8";         // --format: fp8, int8 or int4
  std::string scheme;                 // --scheme (fp8): channel (default, ""), tensor or block128
  int64_t group = -1;                 // --group (int8 / int4): columns per scale, 0 per channel; -1 the default
  bool symmetric = false;             // --symmetric (int4): no zero points
  std::string layout;                 // --layout (int8 / int4): compressed-tensors (default), int-quantized, awq
  bool awq = false;                   // --awq (int4): activation-aware scales (model/awq_search.h)
  std::vector<int32_t> calib_tokens;  // --awq's calibration tokens (the CLI tokenizes --calib)
  std::vector<std::string> keep_16bit;  // --keep-16bit patterns (loader/name_patterns.h)
  bool force = false;                 // --force: replace a non-empty --out
  uint64_t max_shard_bytes = 4'000'000'000;  // tensor bytes per safetensors file before the next
  // Called before each tensor is written and once at the end (done == total); may throw (an
  // interrupt) to abandon the run, which then removes its partial folder.
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> progress;
};

struct QuantizeSummary {
  std::string out;
  std::string quantization;         // QuantConfig::describe() of the result, as Gale reads it back
  int64_t quantized = 0;            // matrices written quantized
  int64_t kept_16bit = 0;           // projections --keep-16bit left as stored
  int64_t awq_groups = 0;           // --awq: groups of projections scaled (q|k|v, gate|up, down, o)
  int64_t copied = 0;               // other tensors, copied as stored
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data
  size_t files = 0;                 // safetensors files written
  std::vector<std::string> ignore;  // the config's ignore / modules_to_not_convert list
};

// Throws gale::Error (one line) for a bad format or scheme, a source that is already quantized
// or not a supported checkpoint, an --out that exists and is not empty (without force), is a
// file, or holds the source, and for any I/O failure.
QuantizeSummary quantize_checkpoint(const QuantizeOptions& o);

}  // namespace gale
