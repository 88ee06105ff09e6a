// Integer weights as published (AWQ, GPTQ, compressed-tensors pack- and int-quantized;
// loader/quant_config.h) repacked at load into the one layout every backend reads
// (model/weights.h's WeightScheme): I8 [out, in], or U8 [out, in / 2] with column 2j in the
// lower nibble of byte j; f32 scales [out, groups]; U8 zero points [out, groups] or none
// (symmetric); in_perm for act-order. Each format is read through one rule: every stored value
// is an unsigned code u in [0, 2^bits) with an unsigned zero point z in the same range, and
// weight = (u − z) · s. The formats differ only in where u, z and s sit:
//   AWQ (gemm)       qweight [in, out/8]: word (k, n/8), nibble slot {0,4,1,5,2,6,3,7}[n % 8]
//                    (AutoAWQ packs columns 0, 2, 4, 6, 1, 3, 5, 7 into nibbles 0..7); qzeros
//                    [in/group, out/8] the same way; scales [in/group, out]; z as stored.
//   GPTQ             qweight [in·bits/32, out]: word (k / p, n), slot k % p (p = 32 / bits);
//                    qzeros [groups, out·bits/32]: word (g, n / p), slot n % p; scales [groups,
//                    out]; g_idx [in]; v1 ("gptq") stores z − 1 (wrapping), v2 z.
//   compressed-tensors pack-quantized: weight_packed [out, ceil(in / p)]: word (n, k / p),
//                    slot k % p, holding the signed value + 2^(bits−1); weight_zero_point packed
//                    along the output dim [ceil(out / p), groups] the same way (or I8 [out,
//                    groups], signed); symmetric: z = 2^(bits−1); weight_g_idx as GPTQ's g_idx.
//   compressed-tensors int-quantized: I8 weight [out, in], u = value + 2^(bits−1).
// 8-bit weights land in I8 (u − 128), so every zero point must be 128 (symmetric); 4-bit zero
// points that are all 8 are dropped (symmetric INT4).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "loader/quant_config.h"

namespace gale {

struct TensorInfo;
struct Linear;

// The stored tensors of one quantized module (nullptr: absent from the checkpoint).
struct IntSource {
  const TensorInfo* weight = nullptr;  // qweight / weight_packed / weight
  const TensorInfo* zeros = nullptr;   // qzeros / weight_zero_point
  const TensorInfo* scales = nullptr;  // scales / weight_scale
  const TensorInfo* g_idx = nullptr;   // g_idx / weight_g_idx
  const TensorInfo* shape = nullptr;   // weight_shape (compressed-tensors pack-quantized)
};

// The tensor names of `module` ("model.layers.0.self_attn.q_proj") in format q.
struct IntTensorNames {
  std::string weight, zeros, scales, g_idx, shape;  // "" where the format has none
};
IntTensorNames int_tensor_names(const QuantConfig& q, const std::string& module);

// One matrix in the canonical layout, owned.
struct IntMatrix {
  int bits = 8;
  int64_t out = 0, in = 0;
  int64_t group = 0;                     // 0: per channel
  std::shared_ptr<uint8_t[]> codes;      // I8 [out, in] or U8 [out, in / 2]
  std::shared_ptr<float[]> scales;       // [out, groups]
  std::shared_ptr<uint8_t[]> zeros;      // [out, groups] or null
  std::shared_ptr<int32_t[]> perm;       // [in] or null (the identity)
  // Points l's values and scheme at this matrix (l.out / l.in already set); the caller keeps
  // the buffers alive (keep()).
  void apply(Linear& l) const;
  void keep(std::vector<std::shared_ptr<const void>>& owned) const;
};

// Checks every tensor of `src` against the layout q and (out, in) imply and repacks it.
// Throws gale::Error naming the first tensor that is missing, of the wrong dtype or shape, or
// holds a value the layout cannot take (a g_idx that is not a grouping, a non-finite scale, an
// 8-bit zero point other than the symmetric one).
IntMatrix repack_int_weights(const QuantConfig& q, const std::string& module, int64_t out, int64_t in,
                             const IntSource& src);

}  // namespace gale
