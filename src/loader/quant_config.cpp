#include "loader/quant_config.h"

#include <cctype>

#include "loader/config_reader.h"

namespace gale {

namespace {

using json = nlohmann::json;

std::string method_of(const json& q) {
  if (q.is_object() && q.contains("quant_method") && q["quant_method"].is_string())
    return q["quant_method"].get<std::string>();
  return "";
}

std::vector<std::string> string_list(const ConfigReader& r, const char* key) {
  std::vector<std::string> out;
  if (!r.has(key)) return out;
  if (!r.j[key].is_array()) r.fail(key, "must be a list of module names");
  for (const json& e : r.j[key]) {
    if (!e.is_string()) r.fail(key, "must be a list of module names");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// A square [b, b] block, b a positive multiple of 16 (the CPU kernels' vector segments).
int64_t square_block(const ConfigReader& r, const char* key) {
  const json& b = r.j[key];
  if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer())
    r.fail(key, "must be a pair of integers [rows, columns]");
  const int64_t rows = b[0].get<int64_t>(), cols = b[1].get<int64_t>();
  if (rows != cols) r.fail(key, "is [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                    "]; only square blocks are supported");
  if (rows <= 0 || rows % 16 != 0 || rows > 65536)
    r.fail(key, "must be a positive multiple of 16 (got " + std::to_string(rows) + ")");
  return rows;
}

std::string string_or(const ConfigReader& r, const char* key, const std::string& d) {
  if (!r.has(key)) return d;
  if (!r.j[key].is_string()) r.fail(key, "must be a string");
  return r.j[key].get<std::string>();
}

// Input columns per scale of an integer format: a positive multiple of 32 (the layout's rule,
// model/weights.h), or -1 for one scale per output channel where the format allows it (→ 0).
int64_t int_group(const ConfigReader& r, const char* key, bool allow_per_channel) {
  const int64_t g = r.i64(key);
  if (g == -1 && allow_per_channel) return 0;
  if (g <= 0 || g % 32 != 0 || g > 65536)
    r.fail(key, "is " + std::to_string(g) + "; integer weights need groups of a positive multiple of 32 columns" +
                    (allow_per_channel ? " (or -1: per channel)" : ""));
  return g;
}

// compressed-tensors "int" weights: pack-quantized (INT4 / INT8 in int32 words) or
// int-quantized (I8 values), per channel or per group.
void parse_compressed_int(const ConfigReader& g, const ConfigReader& w, const std::string& format, QuantConfig& c) {
  c.format = QuantConfig::Format::CompressedTensorsInt;
  if (format != "pack-quantized" && format != "int-quantized")
    g.fail("format", "is '" + format + "'; integer weights are loaded from 'pack-quantized' and 'int-quantized'");
  c.packed = format == "pack-quantized";
  const int64_t bits = w.i64("num_bits");
  if (bits != 4 && bits != 8) w.fail("num_bits", "is " + std::to_string(bits) + "; integer weights of 4 or 8 bits are supported");
  c.bits = int(bits);
  c.symmetric = w.boolean_or("symmetric", true);
  if (!c.symmetric && bits == 8)
    w.fail("symmetric", "is false; 8-bit integer weights are loaded symmetric only (INT8 has no zero points)");
  if (w.boolean_or("dynamic", false)) w.fail("dynamic", "must be false (weights have stored scales)");
  const std::string strategy = string_or(w, "strategy", "");
  if (strategy == "channel") {
    c.group = 0;
  } else if (strategy == "group") {
    c.group = int_group(w, "group_size", false);
  } else {
    w.fail("strategy", "is '" + strategy + "'; integer weights are supported per channel or group");
  }
  // actorder "group" stores weight_g_idx (bound when present); "weight" reorders only the
  // quantization, not the stored layout.
  if (w.has("actorder")) {
    if (!w.j["actorder"].is_string() && !w.j["actorder"].is_boolean()) w.fail("actorder", "must be a string or null");
    c.act_order = w.j["actorder"] == "group" || w.j["actorder"] == true;
  }
  // W8A8 checkpoints quantize activations per token at run time; Gale keeps them in 16/32-bit
  // floats, which only removes error. Static activation scales would be tensors left unused.
  if (g.has("input_activations")) {
    ConfigReader a{g.j["input_activations"], g.what + ".input_activations"};
    if (!a.j.is_object()) a.fail("input_activations", "must be an object or null");
    if (!a.boolean_or("dynamic", false))
      a.fail("dynamic", "must be true: static activation scales of integer checkpoints are not supported");
  }
}

// compressed-tensors: one config group over Linear layers; 8-bit float weights (FP8) or
// integer weights.
QuantConfig parse_compressed_tensors(const ConfigReader& q) {
  QuantConfig c;
  // Sparsity (compressed-tensors' sparsity_config, `gale prune`): the "dense" format stores the
  // pruned weights as ordinary tensors with their zeros, which load as they are; a compressed
  // sparse layout (sparse-24-bitmask, sparse-bitmask) would need decompressing and is refused.
  bool sparse = false;
  if (q.has("sparsity_config") && !q.j["sparsity_config"].is_null()) {
    ConfigReader sp{q.j["sparsity_config"], q.what + ".sparsity_config"};
    if (!sp.j.is_object()) sp.fail("sparsity_config", "must be an object");
    const std::string f = sp.has("format") && sp.j["format"].is_string() ? sp.j["format"].get<std::string>() : "";
    if (f != "dense") sp.fail("format", "is '" + f + "'; of sparse checkpoints Gale loads the 'dense' format (zeros stored)");
    sparse = true;
  }
  const bool no_groups = !q.has("config_groups") || q.j["config_groups"].is_null() ||
                         (q.j["config_groups"].is_object() && q.j["config_groups"].empty());
  if (sparse && no_groups) return {};  // sparsity only: plain weights
  c.format = QuantConfig::Format::CompressedTensorsFp8;
  if (!q.has("config_groups") || !q.j["config_groups"].is_object() || q.j["config_groups"].size() != 1)
    q.fail("config_groups", "must hold exactly one group (mixed schemes are not supported)");
  const json& group = q.j["config_groups"].begin().value();
  ConfigReader g{group, q.what + ": config_groups." + q.j["config_groups"].begin().key()};
  if (!group.is_object()) g.fail("group", "must be an object");
  // Newer compressed-tensors may name the format per group; the top level then says "mixed-precision".
  std::string format = q.has("format") && q.j["format"].is_string() ? q.j["format"].get<std::string>() : "";
  if (g.has("format") && group["format"].is_string()) format = group["format"].get<std::string>();
  const std::vector<std::string> targets = string_list(g, "targets");
  if (targets != std::vector<std::string>{"Linear"}) g.fail("targets", "must be [\"Linear\"]");
  if (!g.has("weights") || !group["weights"].is_object()) g.fail("weights", "is missing");
  if (g.has("output_activations")) g.fail("output_activations", "are not supported");
  ConfigReader w{group["weights"], g.what + ".weights"};
  const std::string type = w.has("type") && w.j["type"].is_string() ? w.j["type"].get<std::string>() : "";
  if (type == "int") {
    parse_compressed_int(g, w, format, c);
  } else {
    if (format != "float-quantized")
      q.fail("format", "is '" + format + "'; of compressed-tensors Gale loads 'float-quantized' (FP8), "
                       "'pack-quantized' and 'int-quantized' (INT4 / INT8) checkpoints");
    if (type != "float" || w.i64_or("num_bits", 0) != 8)
      w.fail("type", "must be 8-bit \"float\" (FP8 E4M3)");
    if (!w.boolean_or("symmetric", true)) w.fail("symmetric", "must be true for FP8 weights");
    if (w.boolean_or("dynamic", false)) w.fail("dynamic", "must be false (weights have stored scales)");
    const std::string strategy = w.has("strategy") && w.j["strategy"].is_string() ? w.j["strategy"].get<std::string>() : "";
    if (strategy == "tensor") {
      c.weights = QuantConfig::Granularity::Tensor;
    } else if (strategy == "channel") {
      c.weights = QuantConfig::Granularity::Channel;
    } else if (strategy == "block") {
      c.weights = QuantConfig::Granularity::Block;
      if (!w.has("block_structure")) w.fail("block_structure", "is required for strategy \"block\"");
      c.block = square_block(w, "block_structure");
    } else {
      w.fail("strategy", "is '" + strategy + "'; FP8 weights are supported per tensor, channel or block");
    }
    if (g.has("input_activations")) {
      ConfigReader a{group["input_activations"], g.what + ".input_activations"};
      if (!a.j.is_object()) a.fail("input_activations", "must be an object or null");
      const std::string at = a.has("type") && a.j["type"].is_string() ? a.j["type"].get<std::string>() : "";
      if (at != "float" || a.i64_or("num_bits", 0) != 8) a.fail("type", "must be 8-bit \"float\"");
      c.static_input_scales = !a.boolean_or("dynamic", false);
    }
  }
  c.ignore = string_list(q, "ignore");
  if (q.has("kv_cache_scheme")) {
    if (!q.j["kv_cache_scheme"].is_object()) q.fail("kv_cache_scheme", "must be an object or null");
    c.kv_scales = true;
  }
  return c;
}

// AutoAWQ's GEMM layout (what transformers' AwqConfig and vLLM's "awq" read).
QuantConfig parse_awq(const ConfigReader& q) {
  QuantConfig c;
  c.format = QuantConfig::Format::Awq;
  const int64_t bits = q.i64_or("bits", q.i64_or("w_bit", 0));
  if (bits != 4) q.fail("bits", "is " + std::to_string(bits) + "; AWQ checkpoints of 4 bits are supported");
  c.bits = 4;
  c.group = int_group(q, q.has("group_size") ? "group_size" : "q_group_size", false);
  if (!q.boolean_or("zero_point", true)) q.fail("zero_point", "must be true (AWQ without zero points is not supported)");
  c.symmetric = false;
  std::string version = string_or(q, "version", "gemm");
  for (char& ch : version) ch = char(std::tolower(uint8_t(ch)));
  // exllama's AWQ modules read the GEMM tensors as stored.
  if (version != "gemm" && version != "exllama")
    q.fail("version", "is '" + version + "'; AWQ's \"gemm\" layout is supported (gemv, marlin and ipex pack differently)");
  if (q.has("modules_to_not_convert")) c.ignore = string_list(q, "modules_to_not_convert");
  return c;
}

// AutoGPTQ / GPTQModel (transformers' GPTQConfig): the layout its CUDA and exllama kernels read.
QuantConfig parse_gptq(const ConfigReader& q) {
  QuantConfig c;
  c.format = QuantConfig::Format::Gptq;
  const int64_t bits = q.i64("bits");
  if (bits != 4 && bits != 8) q.fail("bits", "is " + std::to_string(bits) + "; GPTQ checkpoints of 4 or 8 bits are supported");
  c.bits = int(bits);
  c.group = int_group(q, "group_size", true);
  c.symmetric = q.boolean_or("sym", true);
  if (!c.symmetric && bits == 8)
    q.fail("sym", "is false; 8-bit GPTQ is loaded symmetric only (INT8 weights have no zero points)");
  c.act_order = q.boolean_or("desc_act", false);
  // GPTQModel writes "checkpoint_format" into config.json ("format" in quantize_config.json).
  const std::string fmt_key = q.has("checkpoint_format") ? "checkpoint_format" : "format";
  const std::string fmt = string_or(q, fmt_key.c_str(), "gptq");
  if (fmt != "gptq" && fmt != "gptq_v2")
    q.fail(fmt_key, "is '" + fmt + "'; GPTQ's \"gptq\" and \"gptq_v2\" layouts are supported");
  c.gptq_v1_zeros = fmt == "gptq";
  if (q.boolean_or("is_marlin_format", false)) q.fail("is_marlin_format", "must be false (Marlin repacking is not supported)");
  if (q.has("dynamic") && !(q.j["dynamic"].is_object() && q.j["dynamic"].empty()))
    q.fail("dynamic", "gives per-module overrides, which are not supported");
  if (q.has("modules_to_not_convert")) c.ignore = string_list(q, "modules_to_not_convert");
  return c;
}

// transformers' fine-grained FP8: per-block (weight_block_size) or per-tensor scales.
QuantConfig parse_fp8(const ConfigReader& q) {
  QuantConfig c;
  c.format = QuantConfig::Format::Fp8;
  if (q.has("weight_block_size")) {
    c.weights = QuantConfig::Granularity::Block;
    c.block = square_block(q, "weight_block_size");
  } else {
    c.weights = QuantConfig::Granularity::Tensor;
  }
  if (q.has("activation_scheme")) {
    const json& a = q.j["activation_scheme"];
    if (!a.is_string() || (a != "dynamic" && a != "static"))
      q.fail("activation_scheme", "must be \"dynamic\" or \"static\"");
    c.static_input_scales = a == "static";
  }
  // ue8m0 (power-of-two) scales are stored in another dtype and read differently.
  if (q.has("scale_fmt") && (!q.j["scale_fmt"].is_string() || q.j["scale_fmt"] != "float"))
    q.fail("scale_fmt", "must be \"float\" (other scale formats are not supported)");
  if (q.boolean_or("dequantize", false)) q.fail("dequantize", "must be false in a stored checkpoint");
  c.ignore = string_list(q, "modules_to_not_convert");
  return c;
}

}  // namespace

std::string QuantConfig::describe() const {
  if (format == Format::None) return "none";
  if (integer()) {
    std::string s = format == Format::Awq    ? "AWQ (gemm) "
                    : format == Format::Gptq ? std::string("GPTQ (") + (gptq_v1_zeros ? "gptq" : "gptq_v2") + ") "
                    : packed                 ? "compressed-tensors pack-quantized "
                                             : "compressed-tensors int-quantized ";
    s += bits == 4 ? "INT4" : "INT8";
    s += group ? ", groups of " + std::to_string(group) : std::string(", per-channel scales");
    s += symmetric ? ", symmetric" : ", zero points";
    if (act_order) s += ", act-order";
    return s;
  }
  std::string s = format == Format::Fp8 ? "fp8 (transformers)" : "compressed-tensors FP8";
  s += weights == Granularity::Tensor    ? ", per-tensor weight scales"
       : weights == Granularity::Channel ? ", per-channel weight scales"
                                         : ", " + std::to_string(block) + "x" + std::to_string(block) + " block weight scales";
  s += static_input_scales ? ", static activation scales" : ", dynamic activations";
  if (kv_scales) s += ", KV cache scales";
  return s;
}

QuantConfig parse_quant_config(const ConfigReader& r) {
  if (r.has("compression_config"))
    r.fail("compression_config", "is an older compressed-tensors spelling; re-save the checkpoint so that "
                                 "config.json holds quantization_config");
  if (!r.has("quantization_config")) return {};
  const json& q = r.j["quantization_config"];
  const std::string method = method_of(q);
  ConfigReader qr{q, r.what + ": quantization_config"};
  if (method == "compressed-tensors") return parse_compressed_tensors(qr);
  if (method == "fp8") return parse_fp8(qr);
  if (method == "awq") return parse_awq(qr);
  if (method == "gptq") return parse_gptq(qr);
  r.fail("quantization_config", "asks for quantization method " + (method.empty() ? "unnamed" : "'" + method + "'") +
                                    ", which is not supported (supported: 'fp8', 'awq', 'gptq', 'compressed-tensors' FP8 / INT4 / INT8; and "
                                    "unquantized F32, F16, BF16, F8_E4M3, F8_E5M2 weights)");
}

}  // namespace gale
