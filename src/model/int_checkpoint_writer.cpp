#include "model/int_checkpoint_writer.h"

#include <cstring>

#include "core/error.h"

namespace gale {

namespace {

using Kind = IntWriteLayout::Kind;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t groups_of(const IntWriteLayout& l, int64_t in) { return int_scales_per_row(l.spec, in); }

// Unsigned code of element (n, k): the stored value + 2^(bits−1) for INT8 (compressed-tensors'
// offset), the 4-bit code as WeightScheme holds it (already value + 8, or value + zero).
uint32_t ucode(const IntWriteLayout& l, const IntQuantized& q, int64_t in, int64_t n, int64_t k) {
  if (l.spec.bits == 8) return uint32_t(int(int8_t(q.codes[size_t(n * in + k)])) + 128);
  const uint8_t b = q.codes[size_t(n * (in / 2) + k / 2)];
  return k % 2 == 0 ? b & 15u : b >> 4;
}

std::vector<uint8_t> words_bytes(const std::vector<uint32_t>& w) {
  std::vector<uint8_t> b(w.size() * 4);
  std::memcpy(b.data(), w.data(), b.size());
  return b;
}

// AutoAWQ's GEMM order: nibble i of each int32 holds column 8j + kAwqOrder[i].
constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

}  // namespace

IntWriteLayout parse_int_layout(const std::string& format, int64_t group, bool symmetric, const std::string& layout) {
  IntWriteLayout l;
  if (format == "int8") {
    l.spec.bits = 8;
    l.spec.group = group < 0 ? 0 : group;
    l.spec.symmetric = true;  // INT8 has no zero points (model/weights.h)
  } else if (format == "int4") {
    l.spec.bits = 4;
    l.spec.group = group < 0 ? 128 : group;
    l.spec.symmetric = symmetric;
  } else {
    throw Error("--format must be fp8, int8 or int4 (got '" + format + "')");
  }
  if (l.spec.group > 0 && l.spec.group % 32 != 0)
    throw Error("--group must be a multiple of 32, or 0 for one scale per output channel (got " +
                std::to_string(l.spec.group) + ")");
  if (layout.empty() || layout == "compressed-tensors" || layout == "pack-quantized") {
    l.kind = Kind::PackQuantized;
  } else if (layout == "int-quantized") {
    if (l.spec.bits != 8) throw Error("--layout int-quantized stores INT8 (use --format int8)");
    l.kind = Kind::IntQuantized;
  } else if (layout == "awq") {
    if (l.spec.bits != 4 || l.spec.symmetric || l.spec.group == 0)
      throw Error("--layout awq stores INT4 with zero points per group (--format int4, no --symmetric, --group > 0)");
    l.kind = Kind::Awq;
  } else {
    throw Error("--layout must be compressed-tensors, int-quantized or awq (got '" + layout + "')");
  }
  return l;
}

std::vector<SafetensorsEntry> int_layout_entries(const IntWriteLayout& l, const std::string& m, int64_t out,
                                                 int64_t in) {
  const int64_t groups = groups_of(l, in);
  if (l.spec.bits == 4 && in % 2 != 0)
    throw Error("'" + m + "' has " + std::to_string(in) + " inputs; 4-bit weights need an even count");
  switch (l.kind) {
    case Kind::PackQuantized: {
      const int per = 32 / l.spec.bits;
      std::vector<SafetensorsEntry> es = {{m + ".weight_packed", DType::I32, {out, ceil_div(in, per)}},
                                          {m + ".weight_scale", DType::F32, {out, groups}},
                                          {m + ".weight_shape", DType::I64, {2}}};
      if (!l.spec.symmetric) es.push_back({m + ".weight_zero_point", DType::I32, {ceil_div(out, per), groups}});
      return es;
    }
    case Kind::IntQuantized:
      return {{m + ".weight", DType::I8, {out, in}}, {m + ".weight_scale", DType::F32, {out, groups}}};
    case Kind::Awq:
      if (out % 8 != 0 || in % l.spec.group != 0)
        throw Error("'" + m + "' is [" + std::to_string(out) + ", " + std::to_string(in) +
                    "]; AWQ needs outputs in 8s and whole groups of " + std::to_string(l.spec.group) +
                    " inputs (--keep-16bit it, or use --layout compressed-tensors)");
      return {{m + ".qweight", DType::I32, {in, out / 8}},
              {m + ".qzeros", DType::I32, {groups, out / 8}},
              {m + ".scales", DType::F16, {groups, out}}};
  }
  return {};
}

bool int_layout_needs_codes(const IntWriteLayout& l, const std::string& name) {
  return ends_with(name, ".weight_packed") || ends_with(name, ".qweight") ||
         (l.kind == Kind::IntQuantized && ends_with(name, ".weight"));
}

std::vector<uint8_t> int_layout_bytes(const IntWriteLayout& l, const SafetensorsEntry& e, const IntQuantized& q,
                                      int64_t out, int64_t in) {
  const int64_t groups = groups_of(l, in);
  const int bits = l.spec.bits, per = 32 / bits;
  const std::string& n = e.name;
  if (ends_with(n, ".weight_scale")) {
    std::vector<uint8_t> b(q.scales.size() * 4);
    std::memcpy(b.data(), q.scales.data(), b.size());
    return b;
  }
  if (ends_with(n, ".weight_shape")) {
    const int64_t shape[2] = {out, in};
    std::vector<uint8_t> b(16);
    std::memcpy(b.data(), shape, 16);
    return b;
  }
  if (ends_with(n, ".weight_packed")) {
    const int64_t words = ceil_div(in, per);
    std::vector<uint32_t> w(size_t(out * words), 0);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t k = 0; k < in; ++k) w[size_t(r * words + k / per)] |= ucode(l, q, in, r, k) << (bits * (k % per));
    return words_bytes(w);
  }
  if (ends_with(n, ".weight_zero_point")) {  // packed along the output dim
    std::vector<uint32_t> w(size_t(ceil_div(out, per) * groups), 0);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < groups; ++g)
        w[size_t((r / per) * groups + g)] |= uint32_t(q.zeros[size_t(r * groups + g)]) << (bits * (r % per));
    return words_bytes(w);
  }
  if (ends_with(n, ".weight")) return q.codes;  // int-quantized: the I8 codes as they are
  if (ends_with(n, ".qweight")) {
    const int64_t words = out / 8;
    std::vector<uint32_t> w(size_t(in * words), 0);
    for (int64_t k = 0; k < in; ++k)
      for (int64_t j = 0; j < words; ++j)
        for (int i = 0; i < 8; ++i) w[size_t(k * words + j)] |= ucode(l, q, in, j * 8 + kAwqOrder[i], k) << (4 * i);
    return words_bytes(w);
  }
  if (ends_with(n, ".qzeros")) {
    const int64_t words = out / 8;
    std::vector<uint32_t> w(size_t(groups * words), 0);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t j = 0; j < words; ++j)
        for (int i = 0; i < 8; ++i)
          w[size_t(g * words + j)] |= uint32_t(q.zeros[size_t((j * 8 + kAwqOrder[i]) * groups + g)]) << (4 * i);
    return words_bytes(w);
  }
  if (ends_with(n, ".scales")) {  // AWQ: [groups, out] in F16
    std::vector<uint8_t> b(size_t(groups * out) * 2);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < out; ++r) {
        const uint16_t h = f32_to_f16(q.scales[size_t(r * groups + g)]);
        std::memcpy(b.data() + size_t(g * out + r) * 2, &h, 2);
      }
    return b;
  }
  GALE_ASSERT(false && "not an entry of the layout");
  return {};
}

nlohmann::json int_layout_config(const IntWriteLayout& l, const std::vector<std::string>& ignore) {
  using json = nlohmann::json;
  if (l.kind == Kind::Awq)
    return {{"quant_method", "awq"},  {"bits", 4},           {"group_size", l.spec.group},
            {"zero_point", true},     {"version", "gemm"},   {"modules_to_not_convert", ignore}};
  // llm-compressor's W4A16 / W8A16 presets with our group and symmetry; no activation
  // quantization (activations stay 16-bit).
  json weights = {{"num_bits", l.spec.bits},
                  {"type", "int"},
                  {"symmetric", l.spec.symmetric},
                  {"dynamic", false},
                  {"strategy", l.spec.group ? "group" : "channel"},
                  {"group_size", l.spec.group ? json(l.spec.group) : json()},
                  {"block_structure", nullptr},
                  {"actorder", nullptr},
                  {"observer", "minmax"}};
  return {{"quant_method", "compressed-tensors"},
          {"format", l.kind == Kind::PackQuantized ? "pack-quantized" : "int-quantized"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", nullptr}, {"output_activations", nullptr}}}}},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr}};
}

}  // namespace gale
