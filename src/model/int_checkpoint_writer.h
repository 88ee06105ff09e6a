// Integer weights written in published layouts (`gale quantize --format int8|int4`): the codes,
// scales and zero points of model/int_quantize.h's quantizer (WeightScheme's layout) laid out as
//   compressed-tensors pack-quantized (default, INT4 and INT8): `weight_packed` I32
//     [out, in · bits / 32] (value + 2^(bits−1), 32 / bits consecutive inputs per int32, lowest
//     bits first), `weight_scale` F32 [out, groups], `weight_zero_point` I32 [ceil(out · bits /
//     32), groups] packed along the output dim (asymmetric), `weight_shape` I64 [2]: what
//     llm-compressor's W4A16 / W8A16 schemes save and vLLM's WNA16 and transformers load;
//   compressed-tensors int-quantized (INT8, symmetric): I8 `weight` [out, in], `weight_scale`
//     F32 [out, groups] (transformers decompresses it; vLLM reads this format only with
//     quantized activations);
//   AWQ gemm (INT4, asymmetric, groups): `qweight` I32 [in, out / 8] (AutoAWQ's nibble order
//     0, 2, 4, 6, 1, 3, 5, 7), `qzeros` I32 [in / group, out / 8], `scales` F16 [in / group, out].
// Gale reads each back through model/int_checkpoint.h; the codes and zero points round-trip
// exactly, and the scales too except AWQ's F16 ones.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "loader/safetensors_writer.h"
#include "model/int_quantize.h"

namespace gale {

struct IntWriteLayout {
  enum class Kind { PackQuantized, IntQuantized, Awq };
  Kind kind = Kind::PackQuantized;
  IntQuantSpec spec;
};

// Parses --format int8|int4, --group, --symmetric and --layout into a layout; throws
// gale::Error naming the option for a combination the layout cannot store.
IntWriteLayout parse_int_layout(const std::string& format, int64_t group, bool symmetric, const std::string& layout);

// One matrix quantized by quantize_int: codes, scales and zero points (asymmetric) row-major.
struct IntQuantized {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<uint8_t> zeros;
};

// The tensors (full names) module `module`'s [out, in] weight is written as; throws
// gale::Error naming the module when its shape does not fit the layout (AWQ: out a multiple
// of 8, in of the group).
std::vector<SafetensorsEntry> int_layout_entries(const IntWriteLayout& l, const std::string& module, int64_t out,
                                                 int64_t in);
// Whether writing entry `name` needs the codes (else only the scales and zero points).
bool int_layout_needs_codes(const IntWriteLayout& l, const std::string& name);
// The bytes of entry e (one of int_layout_entries) from q.
std::vector<uint8_t> int_layout_bytes(const IntWriteLayout& l, const SafetensorsEntry& e, const IntQuantized& q,
                                      int64_t out, int64_t in);
// config.json's quantization_config for the layout, `ignore` the modules left in 16 bits.
nlohmann::json int_layout_config(const IntWriteLayout& l, const std::vector<std::string>& ignore);

}  // namespace gale
