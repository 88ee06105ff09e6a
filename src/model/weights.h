// The weights of a decoder-only transformer, pointing into the mapped checkpoint
// (or a synthetic buffer): matrices stay in their stored dtype.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "loader/model_config.h"

namespace gale {

class SafeTensors;

// How a matrix's numbers are stored beyond their element type: the scales, zero points and
// packing of quantized formats. A weight format is data here, not a code path through the
// model: binding (model/arch/) or a transform (model/transforms.h) fills the scheme in, and
// each backend says which schemes its ops run (Backend::supports); the model refuses, naming
// the tensor, a matrix its backend cannot run. Plain 16/32-bit and FP8 weights without scales
// have the default scheme.
struct WeightScheme {
  enum class Scales : uint8_t {
    None,        // the stored values are the weights
    PerTensor,   // one scale
    PerChannel,  // one per output row: [out]
    PerGroup,    // one per `group` input columns of each row: [out, in / group]
    PerBlock,    // one per group x group tile: [ceil(out / group), ceil(in / group)]
  };
  enum class Packing : uint8_t {
    None,  // one element of the dtype per value
    U4,    // two 4-bit values per byte of U8, the lower nibble first (AWQ / GPTQ style)
  };
  // Integer weights (INT8 / INT4: AWQ, GPTQ, compressed-tensors pack- and int-quantized,
  // --quantization int8|int4) in the one layout every loader repacks them to and every backend
  // reads: weight (n, k) = (q − z) · s, that product rounded to f32, with
  //   dtype I8, packing None: q the stored int8, z = 0 (symmetric; `zero` null);
  //   dtype U8, packing U4:   q in 0..15, two per byte, column 2j in the lower nibble of byte j
  //                           of its row ([out, in / 2] bytes; `ld` still counts values); z from
  //                           `zero` (one U8 in 0..15 per scale, in the scales' layout) or 8 when
  //                           `zero` is null (symmetric);
  //   s: f32 scales PerChannel or PerGroup (a group a multiple of 32 columns).
  // GPTQ's act-order (desc_act) checkpoints sort the input columns by group at load: stored
  // column j then holds input feature in_perm[j], so y = x[:, in_perm] · Wᵀ (backends gather x).
  Scales scales = Scales::None;
  const void* scale = nullptr;  // in the layout the kind says
  DType scale_dtype = DType::F32;
  int64_t group = 0;            // PerGroup / PerBlock
  int64_t scale_ld = 0;         // PerGroup / PerBlock: scales per stored row of them; 0: as `in` implies
  const void* zero = nullptr;   // zero points in the scales' layout (asymmetric formats), or null
  DType zero_dtype = DType::U8;
  Packing packing = Packing::None;
  const int32_t* in_perm = nullptr;  // [in] (act-order integer weights), or null: the identity
  bool plain() const {
    return scales == Scales::None && packing == Packing::None && zero == nullptr && in_perm == nullptr;
  }
};

// A projection y = x · Wᵀ (+ bias): a view of `out` rows of `in` values, row r starting `ld`
// elements after row r - 1 (a fused tensor's slice, or a tensor-parallel shard of the mapped
// checkpoint, is a view and not a copy).
struct Linear {
  const void* w = nullptr;  // the view's first element, in dtype
  DType dtype = DType::F32;
  int64_t out = 0, in = 0;
  std::vector<float> bias;  // [out] or empty
  int64_t ld = 0;           // row stride in elements; 0: `in` (rows packed back to back)
  WeightScheme scheme;
  std::string name;         // the checkpoint's tensor, for messages ("" for made-up matrices)
  int64_t row_stride() const { return ld ? ld : in; }
  bool packed_rows() const { return row_stride() == in; }
  // Bytes of the stored values the view covers (scales not counted).
  size_t bytes() const {
    const size_t n = size_t(out) * size_t(in);
    return scheme.packing == WeightScheme::Packing::U4 ? (n + 1) / 2 : n * dtype_size(dtype);
  }
  // Rows [r0, r0 + n) as a view of the same storage, with their bias and scales (a per-block
  // scheme: r0 a multiple of the block).
  Linear rows_view(int64_t r0, int64_t n) const;
  // Columns [c0, c0 + n): the partial product over those inputs (a row-parallel shard), so
  // without the bias, which the caller adds once; whole scale groups only (c0 a multiple of
  // the group, n too unless the view reaches the last column).
  Linear cols_view(int64_t c0, int64_t n) const;
  // Where the scale of element (r, c) of the view sits: scale[(r / rows) * ld + c / cols] (one
  // formula for every kind: per tensor rows = out and cols = in, per channel rows = 1, ...).
  struct ScaleLayout {
    int64_t rows = 1, cols = 1, ld = 1;
  };
  ScaleLayout scale_layout() const;
  // FP8 values with their scales in a layout a kernel can walk: packed rows, no zero points,
  // no packing (what the backends' supports() build on).
  bool scaled_fp8() const;
  // Integer weights in the layout WeightScheme describes (I8, or U8 packed 4-bit; f32 scales per
  // channel or per group of a multiple of 32; U8 zero points or none).
  bool integer_weights() const;
};

// "BF16", "F8_E4M3, per-channel scales", "U8 packed 4-bit, groups of 128, zero points".
std::string describe_storage(const Linear& l);

struct ExpertWeights {
  Linear gate, up, down;  // w1, w3, w2 in Mixtral's naming
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [hidden]
  std::vector<float> q_norm, k_norm;       // [head_dim] (Qwen3) or empty
  Linear q, k, v, o;
  Linear gate, up, down;                   // dense MLP
  Linear router;                           // [num_experts, hidden] (MoE)
  std::vector<ExpertWeights> experts;      // MoE
  float k_scale = 0, v_scale = 0;          // FP8 KV cache scales of a quantized checkpoint (0: none)
};

struct ModelWeights {
  const void* embed = nullptr;  // [vocab, hidden]
  DType embed_dtype = DType::F32;
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;
  Linear lm_head;               // aliases embed when tie_word_embeddings
  std::shared_ptr<const void> storage;  // keeps the mapping / buffer alive
  std::vector<std::shared_ptr<const void>> owned;  // matrices transforms made (model/transforms.h)
  size_t total_bytes = 0;       // every tensor of the checkpoint that the model uses
  std::vector<std::string> dtypes;  // distinct stored dtypes, for `gale info`
};

// Every matrix of the model in a fixed order (per layer q, k, v, o, gate, up, down, router,
// experts' gate, up, down; then lm_head): what transforms and backend checks walk.
void for_each_linear(const ModelWeights& w, const std::function<void(const Linear&)>& fn);
void for_each_linear(ModelWeights& w, const std::function<void(Linear&)>& fn);
// The layers' projections only (per layer q, k, v, o, gate, up, down, experts' gate, up, down;
// not the MoE routers nor the LM head): what FP8 quantization rewrites (--quantization fp8,
// `gale quantize`). A fused checkpoint tensor (Phi-3's qkv_proj) comes once per view, each
// view with the tensor's name.
void for_each_projection(const ModelWeights& w, const std::function<void(const Linear&)>& fn);
void for_each_projection(ModelWeights& w, const std::function<void(Linear&)>& fn);

// Binds every tensor the config calls for; throws gale::Error naming a missing tensor or one
// whose shape or dtype disagrees with config.json.
ModelWeights bind_weights(std::shared_ptr<const SafeTensors> st, const ModelConfig& cfg);
// The tensors (name, shape) a checkpoint of cfg holds, in binding order, as its architecture
// names them (model/arch/): the layout of synthetic models.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_layout(const ModelConfig& cfg);

}  // namespace gale
