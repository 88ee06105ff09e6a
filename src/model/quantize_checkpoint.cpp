#include "model/quantize_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

#include "core/error.h"
#include "loader/name_patterns.h"
#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"
#include "model/arch/arch.h"
#include "model/awq_search.h"
#include "model/checkpoint_folder.h"
#include "model/fp8_quantize.h"
#include "model/int_checkpoint_writer.h"
#include "model/weights.h"

namespace gale {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Scheme {
  Fp8Granularity granularity;
  int64_t block;
  bool transformers_fp8;  // quant_method "fp8" (weight_scale_inv) rather than compressed-tensors
  bool integer = false;   // --format int8 | int4: written as `layout` says
  IntWriteLayout layout{};
  const char* scale_suffix() const { return transformers_fp8 ? "weight_scale_inv" : "weight_scale"; }
};

Scheme parse_scheme(const QuantizeOptions& o) {
  if (o.format == "int8" || o.format == "int4") {
    if (!o.scheme.empty()) throw Error("--scheme applies to --format fp8 (integer formats take --group and --layout)");
    Scheme s{Fp8Granularity::Channel, 0, false};
    s.integer = true;
    s.layout = parse_int_layout(o.format, o.group, o.symmetric, o.layout);
    if (o.awq && s.layout.spec.bits != 4) throw Error("--awq applies to --format int4");
    return s;
  }
  if (o.awq) throw Error("--awq applies to --format int4");
  if (o.format != "fp8") throw Error("--format must be fp8, int8 or int4 (got '" + o.format + "')");
  if (o.group >= 0 || o.symmetric || !o.layout.empty())
    throw Error("--group, --symmetric and --layout apply to --format int8 and int4");
  const std::string& scheme = o.scheme.empty() ? "channel" : o.scheme;
  if (scheme == "channel") return {Fp8Granularity::Channel, 0, false};
  if (scheme == "tensor") return {Fp8Granularity::Tensor, 0, false};
  if (scheme == "block128") return {Fp8Granularity::Block, 128, true};
  throw Error("--scheme must be channel, tensor or block128 (got '" + scheme + "')");
}

json compressed_tensors_config(const Scheme& s, const std::vector<std::string>& ignore) {
  const char* strategy = s.granularity == Fp8Granularity::Channel ? "channel" : "tensor";
  json weights = {{"num_bits", 8},       {"type", "float"},       {"symmetric", true},
                  {"dynamic", false},    {"strategy", strategy},  {"group_size", nullptr},
                  {"block_structure", nullptr}, {"actorder", nullptr}, {"observer", "minmax"}};
  // FP8_DYNAMIC: activations quantized per token at run time (no calibration, no input_scale).
  json acts = {{"num_bits", 8},     {"type", "float"},      {"symmetric", true},
               {"dynamic", true},   {"strategy", "token"},  {"group_size", nullptr},
               {"block_structure", nullptr}, {"observer", nullptr}};
  return {{"quant_method", "compressed-tensors"},
          {"format", "float-quantized"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", acts}, {"output_activations", nullptr}}}}},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr}};
}

// What transformers' FineGrainedFP8Config saves (5.x), with our block and kept modules.
json transformers_fp8_config(const Scheme& s, const std::vector<std::string>& ignore) {
  return {{"quant_method", "fp8"},
          {"activation_scheme", "dynamic"},
          {"weight_block_size", {s.block, s.block}},
          {"modules_to_not_convert", ignore},
          {"modules_to_convert", nullptr},
          {"dequantize", false},
          {"scale_fmt", "float"}};
}

// One output tensor: copied from the source, a quantized matrix's FP8 codes or scales, or one
// tensor of an integer layout (model/int_checkpoint_writer.h).
struct Item {
  enum class Kind { Copy, Codes, Scales, IntPart } kind;
  const TensorInfo* src;
};

// The quantization itself: every file of the result written into `dir` (which exists, empty).
QuantizeSummary write_quantized(const QuantizeOptions& o, const Scheme& sc, const fs::path& dir) {
  const NamePatterns keep(o.keep_16bit, "--keep-16bit");
  ModelConfig cfg = load_model_config(o.source);
  if (cfg.quant.quantized())
    throw Error(o.source + " is quantized already (" + cfg.quant.describe() +
                "); gale quantize reads 16/32-bit checkpoints");
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(o.source));
  const ModelWeights w = bind_weights(st, cfg);  // every tensor checked; projections found by the architecture

  QuantizeSummary sum;
  std::set<std::string> quantize, kept;
  std::vector<bool> used(o.keep_16bit.size(), false);
  for_each_projection(w, [&](const Linear& l) {
    if (!is_fp8(l.dtype) && l.dtype != DType::F32 && l.dtype != DType::F16 && l.dtype != DType::BF16)
      throw Error("'" + l.name + "' has dtype " + std::string(dtype_name(l.dtype)) + "; gale quantize reads F32, F16 or BF16");
    if (is_fp8(l.dtype))
      throw Error("'" + l.name + "' is " + std::string(dtype_name(l.dtype)) +
                  " already; gale quantize reads 16/32-bit checkpoints");
    if (const int k = keep.match_index(l.name); k >= 0) {
      used[size_t(k)] = true;
      kept.insert(l.name);
    } else {
      quantize.insert(l.name);
    }
  });
  for (size_t k = 0; k < used.size(); ++k)
    if (!used[k])
      throw Error("--keep-16bit '" + o.keep_16bit[k] +
                  "' matches no layer projection (the LM head and MoE routers are never quantized)");
  // Modules left in 16 bits, as the config lists them: the LM head under transformers' name
  // (tied or not), then every router and kept projection.
  std::set<std::string> others;
  for_each_linear(w, [&](const Linear& l) {
    if (&l != &w.lm_head && !quantize.count(l.name)) others.insert(module_name_of(l.name));
  });
  sum.ignore.push_back("lm_head");
  for (const std::string& m : others)
    if (m != "lm_head") sum.ignore.push_back(m);

  // The plan: source order (by name), a quantized matrix's scales right after its codes.
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, Item> items;
  std::map<std::string, int> int_parts_left;  // integer layouts: tensors of each matrix still to write
  for (const auto& [name, t] : st->tensors()) {
    sum.bytes_in += t.nbytes;
    if (!quantize.count(name)) {
      entries.push_back({name, t.dtype, t.shape});
      items.emplace(name, Item{Item::Kind::Copy, &t});
      ++sum.copied;
      continue;
    }
    GALE_ASSERT(t.shape.size() == 2);
    const int64_t rows = t.shape[0], cols = t.shape[1], b = sc.block;
    if (sc.integer) {
      for (SafetensorsEntry& e : int_layout_entries(sc.layout, module_name_of(name), rows, cols)) {
        items.emplace(e.name, Item{Item::Kind::IntPart, &t});
        entries.push_back(std::move(e));
        ++int_parts_left[name];
      }
      ++sum.quantized;
      continue;
    }
    std::vector<int64_t> sshape = sc.granularity == Fp8Granularity::Channel ? std::vector<int64_t>{rows, 1}
                                  : sc.granularity == Fp8Granularity::Tensor
                                      ? std::vector<int64_t>{1}
                                      : std::vector<int64_t>{(rows + b - 1) / b, (cols + b - 1) / b};
    const std::string sname = module_name_of(name) + "." + sc.scale_suffix();
    entries.push_back({name, DType::F8_E4M3, t.shape});
    entries.push_back({sname, DType::F32, sshape});
    items.emplace(name, Item{Item::Kind::Codes, &t});
    items.emplace(sname, Item{Item::Kind::Scales, &t});
    ++sum.quantized;
  }
  // --awq: per-input-channel scales multiplied into the quantized matrices (col_scale) and
  // divided out where their input comes from (model/awq_search.h): RMSNorm weights and biases
  // (vec_div), the rows of up and v (row_div). A group is scaled only when every matrix it
  // touches is quantized (a --keep-16bit one would need the scaling in 16 bits).
  std::map<std::string, std::vector<float>> col_scale, row_div, vec_div;
  if (o.awq) {
    const std::vector<AwqLayerScales> awq = awq_search(cfg, bind_weights(st, cfg), o.calib_tokens, sc.layout.spec);
    auto all_quantized = [&](std::initializer_list<const Linear*> ls) {
      for (const Linear* l : ls)
        if (!quantize.count(l->name)) return false;
      return true;
    };
    auto divide = [&](const std::string& tensor, const std::vector<float>& s) {
      if (!st->find(tensor)) throw Error("--awq: the checkpoint has no '" + tensor + "' to fold the scales into");
      vec_div[tensor] = s;
    };
    auto bias_of = [&](const Linear& l) { return module_name_of(l.name) + ".bias"; };
    for (size_t i = 0; i < awq.size(); ++i) {
      const LayerWeights& L = w.layers[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      if (all_quantized({&L.q, &L.k, &L.v})) {
        for (const Linear* l : {&L.q, &L.k, &L.v}) col_scale[l->name] = awq[i].qkv;
        divide(p + "input_layernorm.weight", awq[i].qkv);
        ++sum.awq_groups;
      }
      if (all_quantized({&L.gate, &L.up})) {
        col_scale[L.gate.name] = col_scale[L.up.name] = awq[i].gate_up;
        divide(p + "post_attention_layernorm.weight", awq[i].gate_up);
        ++sum.awq_groups;
      }
      if (all_quantized({&L.up, &L.down})) {
        col_scale[L.down.name] = awq[i].down;
        row_div[L.up.name] = awq[i].down;
        if (!L.up.bias.empty()) divide(bias_of(L.up), awq[i].down);
        ++sum.awq_groups;
      }
      if (!awq[i].o.empty() && all_quantized({&L.v, &L.o})) {
        col_scale[L.o.name] = awq[i].o;
        row_div[L.v.name] = awq[i].o;
        if (!L.v.bias.empty()) divide(bias_of(L.v), awq[i].o);
        ++sum.awq_groups;
      }
    }
  }
  sum.kept_16bit = int64_t(kept.size());
  sum.copied -= sum.kept_16bit;
  uint64_t total = 0, done = 0;
  for (const SafetensorsEntry& e : entries) total += e.nbytes();
  sum.bytes_out = total;

  // Scales of each quantized matrix, made when its first tensor (scales or codes) is written:
  // a few floats per row or block, so all of them together are small.
  std::map<std::string, std::vector<float>> scales;
  auto scales_of = [&](const TensorInfo& t) -> const std::vector<float>& {
    auto it = scales.find(t.name);
    if (it != scales.end()) return it->second;
    const int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<float> s(size_t(fp8_scale_count(sc.granularity, rows, cols, sc.block)));
    fp8_scales(t.data, t.dtype, rows, cols, cols, sc.granularity, sc.block, s.data());
    return scales.emplace(t.name, std::move(s)).first->second;
  };

  // Integer matrices quantized when their first tensor is written; the scales and zero points
  // kept until the matrix's last tensor is, the codes only while the tensor that holds them is
  // written (file order puts a matrix's tensors apart: I64, then I32, F32, F16, I8).
  std::map<std::string, IntQuantized> ints;
  auto int_of = [&](const TensorInfo& t, bool need_codes) -> IntQuantized& {
    IntQuantized& q = ints[t.name];
    if (!q.scales.empty() && (!need_codes || !q.codes.empty())) return q;
    const IntQuantSpec& spec = sc.layout.spec;
    const int64_t rows = t.shape[0], cols = t.shape[1], spr = int_scales_per_row(spec, cols);
    q.codes.assign(size_t(rows * int_code_bytes_per_row(spec, cols)), 0);
    q.scales.assign(size_t(rows * spr), 0.0f);
    q.zeros.assign(spec.symmetric ? 0 : size_t(rows * spr), 0);
    const auto cs = col_scale.find(t.name);
    const auto rd = row_div.find(t.name);
    if (rd == row_div.end()) {
      quantize_int(t.data, t.dtype, rows, cols, cols, spec, cs == col_scale.end() ? nullptr : cs->second.data(),
                   q.codes.data(), q.scales.data(), spec.symmetric ? nullptr : q.zeros.data());
      return q;
    }
    // AWQ folded into this matrix's rows: a scaled f32 copy, quantized with its own column scales.
    std::vector<float> m(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        m[size_t(r * cols + c)] = load_as_f32(t.data, t.dtype, size_t(r * cols + c)) / rd->second[size_t(r)];
    quantize_int(m.data(), DType::F32, rows, cols, cols, spec, cs == col_scale.end() ? nullptr : cs->second.data(),
                 q.codes.data(), q.scales.data(), spec.symmetric ? nullptr : q.zeros.data());
    return q;
  };

  const auto shards = plan_safetensors_shards(entries, o.max_shard_bytes);
  json weight_map = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = safetensors_shard_name(k + 1, shards.size());
    SafetensorsWriter out((dir / file).string(), shards[k]);
    for (const SafetensorsEntry& e : out.entries()) {
      if (o.progress) o.progress(done, total);
      const Item& it = items.at(e.name);
      const TensorInfo& t = *it.src;
      switch (it.kind) {
        case Item::Kind::Copy: {
          const auto d = vec_div.find(t.name);
          if (d == vec_div.end()) {
            out.write({t.data, t.nbytes});
            break;
          }
          // An AWQ-scaled vector (norm weight or bias): w / s in its own dtype.
          std::vector<uint8_t> b(t.nbytes);
          for (size_t k = 0; k < d->second.size(); ++k) {
            const float v = load_as_f32(t.data, t.dtype, k) / d->second[k];
            if (t.dtype == DType::F32) {
              std::memcpy(b.data() + 4 * k, &v, 4);
            } else {
              const uint16_t h = t.dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
              std::memcpy(b.data() + 2 * k, &h, 2);
            }
          }
          out.write(b);
          break;
        }
        case Item::Kind::Scales: {
          const std::vector<float>& s = scales_of(t);
          out.write({reinterpret_cast<const uint8_t*>(s.data()), s.size() * sizeof(float)});
          break;
        }
        case Item::Kind::IntPart: {
          const bool codes = int_layout_needs_codes(sc.layout, e.name);
          IntQuantized& q = int_of(t, codes);
          out.write(int_layout_bytes(sc.layout, e, q, t.shape[0], t.shape[1]));
          if (codes) std::vector<uint8_t>().swap(q.codes);  // the one converted copy held
          if (--int_parts_left[t.name] == 0) ints.erase(t.name);
          break;
        }
        case Item::Kind::Codes: {
          const int64_t rows = t.shape[0], cols = t.shape[1];
          std::vector<uint8_t> codes(size_t(rows) * size_t(cols));  // the one converted copy held
          fp8_encode(t.data, t.dtype, rows, cols, cols, sc.granularity, sc.block, scales_of(t).data(), codes.data());
          out.write(codes);
          break;
        }
      }
      done += e.nbytes();
      weight_map[e.name] = file;
    }
    out.finish();
  }
  sum.files = shards.size();
  if (shards.size() > 1)
    write_json_file(dir / "model.safetensors.index.json",
                    {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});

  json config = read_json_file(fs::path(o.source) / "config.json");
  config["quantization_config"] = sc.integer            ? int_layout_config(sc.layout, sum.ignore)
                                  : sc.transformers_fp8 ? transformers_fp8_config(sc, sum.ignore)
                                                        : compressed_tensors_config(sc, sum.ignore);
  write_json_file(dir / "config.json", config);
  copy_side_files(o.source, dir);
  // What was written loads: the config parses and every tensor binds with its scales.
  // (Block scales also need every fused tensor's split on a block boundary: Phi-3's q|k|v
  // rows at multiples of 128, true of the released models but not of tiny test ones.)
  try {
    const ModelConfig back = load_model_config(dir.string());
    bind_weights(std::make_shared<SafeTensors>(SafeTensors::open_dir(dir.string())), back);
    sum.quantization = back.quant.describe();
  } catch (const Error& e) {
    throw Error("the quantized checkpoint would not load back (nothing written): " + std::string(e.what()));
  }
  if (o.progress) o.progress(total, total);
  return sum;
}

}  // namespace

QuantizeSummary quantize_checkpoint(const QuantizeOptions& o) {
  const Scheme sc = parse_scheme(o);
  NamePatterns(o.keep_16bit, "--keep-16bit");  // a bad pattern fails before anything is read
  if (o.source.rfind("synthetic:", 0) == 0) throw Error("gale quantize reads a checkpoint folder, not " + o.source);
  if (!fs::is_directory(o.source)) throw Error("model folder " + o.source + " not found");
  QuantizeSummary sum;
  const std::string out = write_checkpoint_folder(o.source, o.out, o.force, [&](const fs::path& dir) {
    sum = write_quantized(o, sc, dir);
  });
  sum.out = out;
  return sum;
}

}  // namespace gale
