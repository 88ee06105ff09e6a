#include "loader/quant_config.h"

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

// compressed-tensors: one config group over Linear layers, 8-bit float weights, symmetric.
QuantConfig parse_compressed_tensors(const ConfigReader& q) {
  QuantConfig c;
  c.format = QuantConfig::Format::CompressedTensorsFp8;
  const std::string format = q.has("format") && q.j["format"].is_string() ? q.j["format"].get<std::string>() : "";
  if (format != "float-quantized")
    q.fail("format", "is '" + format + "'; of compressed-tensors Gale loads 'float-quantized' (FP8) checkpoints");
  if (!q.has("config_groups") || !q.j["config_groups"].is_object() || q.j["config_groups"].size() != 1)
    q.fail("config_groups", "must hold exactly one group (mixed schemes are not supported)");
  const json& group = q.j["config_groups"].begin().value();
  ConfigReader g{group, q.what + ": config_groups." + q.j["config_groups"].begin().key()};
  if (!group.is_object()) g.fail("group", "must be an object");
  const std::vector<std::string> targets = string_list(g, "targets");
  if (targets != std::vector<std::string>{"Linear"}) g.fail("targets", "must be [\"Linear\"]");
  if (!g.has("weights") || !group["weights"].is_object()) g.fail("weights", "is missing");
  ConfigReader w{group["weights"], g.what + ".weights"};
  const std::string type = w.has("type") && w.j["type"].is_string() ? w.j["type"].get<std::string>() : "";
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
  if (g.has("output_activations")) g.fail("output_activations", "are not supported");
  c.ignore = string_list(q, "ignore");
  if (q.has("kv_cache_scheme")) {
    if (!q.j["kv_cache_scheme"].is_object()) q.fail("kv_cache_scheme", "must be an object or null");
    c.kv_scales = true;
  }
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
  r.fail("quantization_config", "asks for quantization method " + (method.empty() ? "unnamed" : "'" + method + "'") +
                                    ", which is not supported (supported: 'fp8', 'compressed-tensors' FP8; and "
                                    "unquantized F32, F16, BF16, F8_E4M3, F8_E5M2 weights)");
}

}  // namespace gale
