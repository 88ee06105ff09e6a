#include "model/weights.h"

#include <algorithm>

#include "core/error.h"
#include "loader/checkpoint_check.h"
#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/weight_binder.h"

namespace gale {

namespace {

// The tensors every architecture shares (embedding, final norm, LM head) around its layers.
ModelWeights bind_with(TensorBinder& b, const ModelConfig& c) {
  const Architecture& arch = find_architecture(c.architecture);
  ModelWeights w;
  const int64_t H = c.hidden_size;
  const TensorInfo& emb = b.tensor("model.embed_tokens.weight", {c.vocab_size, H});
  w.embed = emb.data;
  w.embed_dtype = emb.dtype;
  w.layers.resize(size_t(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i)
    arch.bind_layer(b, c, "model.layers." + std::to_string(i) + ".", w.layers[size_t(i)]);
  w.final_norm = b.vec("model.norm.weight", H);
  if (c.tie_word_embeddings && !b.has("lm_head.weight")) {
    w.lm_head.w = emb.data;
    w.lm_head.dtype = emb.dtype;
    w.lm_head.out = c.vocab_size;
    w.lm_head.in = H;
    w.lm_head.name = emb.name;
  } else {
    w.lm_head = b.linear("lm_head", c.vocab_size, H, false);
  }
  return w;
}

using Scales = WeightScheme::Scales;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Scales (or zero points) per stored row of them, and the element offset of scale row `r`.
int64_t scales_per_row(const Linear& l) {
  const WeightScheme& s = l.scheme;
  if (s.scale_ld) return s.scale_ld;
  return s.scales == Scales::PerGroup || s.scales == Scales::PerBlock ? ceil_div(l.in, s.group) : 1;
}

const void* offset(const void* p, int64_t elems, DType dt) {
  return p ? static_cast<const uint8_t*>(p) + size_t(elems) * dtype_size(dt) : nullptr;
}

// Moves a scheme's scale and zero pointers by `elems` scale elements.
void offset_scales(WeightScheme& s, int64_t elems) {
  s.scale = offset(s.scale, elems, s.scale_dtype);
  s.zero = offset(s.zero, elems, s.zero_dtype);
}

// Byte offset of element (r, c) of the stored values.
size_t value_offset(const Linear& l, int64_t r, int64_t c) {
  const size_t e = size_t(r) * size_t(l.row_stride()) + size_t(c);
  return l.scheme.packing == WeightScheme::Packing::U4 ? e / 2 : e * dtype_size(l.dtype);
}

}  // namespace

Linear Linear::rows_view(int64_t r0, int64_t n) const {
  GALE_ASSERT(r0 >= 0 && n > 0 && r0 + n <= out);
  Linear v = *this;
  if (w) v.w = static_cast<const uint8_t*>(w) + value_offset(*this, r0, 0);
  v.out = n;
  v.ld = row_stride();
  if (!bias.empty()) v.bias.assign(bias.begin() + r0, bias.begin() + r0 + n);
  v.scheme.scale_ld = scales_per_row(*this);
  switch (scheme.scales) {
    case Scales::None:
    case Scales::PerTensor: break;
    case Scales::PerChannel: offset_scales(v.scheme, r0); break;
    case Scales::PerGroup: offset_scales(v.scheme, r0 * v.scheme.scale_ld); break;
    case Scales::PerBlock:
      if (r0 % scheme.group != 0)
        throw Error("'" + name + "': rows from " + std::to_string(r0) + " do not start on a " +
                    std::to_string(scheme.group) + "-row scale block");
      offset_scales(v.scheme, r0 / scheme.group * v.scheme.scale_ld);
      break;
  }
  return v;
}

Linear Linear::cols_view(int64_t c0, int64_t n) const {
  GALE_ASSERT(c0 >= 0 && n > 0 && c0 + n <= in);
  if (scheme.packing == WeightScheme::Packing::U4) GALE_ASSERT(c0 % 2 == 0 && row_stride() % 2 == 0);
  if (scheme.in_perm && (c0 != 0 || n != in))
    throw Error("'" + name + "': act-order (g_idx) weights cannot be split by input columns");
  Linear v = *this;
  if (w) v.w = static_cast<const uint8_t*>(w) + value_offset(*this, 0, c0);
  v.in = n;
  v.ld = row_stride();
  v.bias.clear();
  v.scheme.scale_ld = scales_per_row(*this);
  if (scheme.scales == Scales::PerGroup || scheme.scales == Scales::PerBlock) {
    GALE_ASSERT(c0 % scheme.group == 0 && (n % scheme.group == 0 || c0 + n == in));
    offset_scales(v.scheme, c0 / scheme.group);
  }
  return v;
}

Linear::ScaleLayout Linear::scale_layout() const {
  const int64_t all_rows = std::max<int64_t>(out, 1), all_cols = std::max<int64_t>(in, 1);
  switch (scheme.scales) {
    case Scales::None:
    case Scales::PerTensor: return {all_rows, all_cols, 1};
    case Scales::PerChannel: return {1, all_cols, 1};
    case Scales::PerGroup: return {1, scheme.group, scales_per_row(*this)};
    case Scales::PerBlock: return {scheme.group, scheme.group, scales_per_row(*this)};
  }
  return {};
}

bool Linear::scaled_fp8() const {
  return is_fp8(dtype) && scheme.scales != Scales::None && scheme.scale && !scheme.zero &&
         scheme.packing == WeightScheme::Packing::None && packed_rows();
}

bool Linear::integer_weights() const {
  const WeightScheme& s = scheme;
  const bool i8 = dtype == DType::I8 && s.packing == WeightScheme::Packing::None && !s.zero;
  const bool u4 = dtype == DType::U8 && s.packing == WeightScheme::Packing::U4 && in % 2 == 0 && row_stride() % 2 == 0;
  const bool scaled = (s.scales == Scales::PerChannel || (s.scales == Scales::PerGroup && s.group > 0 && s.group % 32 == 0)) &&
                      s.scale && s.scale_dtype == DType::F32 && (!s.zero || s.zero_dtype == DType::U8);
  return (i8 || u4) && scaled;
}

std::string describe_storage(const Linear& l) {
  const WeightScheme& s = l.scheme;
  std::string r(dtype_name(l.dtype));
  if (s.packing == WeightScheme::Packing::U4) r += " packed 4-bit";
  switch (s.scales) {
    case Scales::None: break;
    case Scales::PerTensor: r += ", one scale"; break;
    case Scales::PerChannel: r += ", per-channel scales"; break;
    case Scales::PerGroup: r += ", scales per group of " + std::to_string(s.group); break;
    case Scales::PerBlock: r += ", scales per " + std::to_string(s.group) + "x" + std::to_string(s.group) + " block"; break;
  }
  if (s.zero) r += ", zero points";
  if (s.in_perm) r += ", act-order";
  if (!l.packed_rows()) r += ", row stride " + std::to_string(l.row_stride());
  return r;
}

namespace {

template <class W, class Fn>
void walk_linears(W& w, Fn&& fn) {
  for (auto& L : w.layers) {
    for (auto* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.router})
      if (l->out > 0) fn(*l);
    for (auto& e : L.experts)
      for (auto* l : {&e.gate, &e.up, &e.down}) fn(*l);
  }
  if (w.lm_head.out > 0) fn(w.lm_head);
}

template <class W, class Fn>
void walk_projections(W& w, Fn&& fn) {
  for (auto& L : w.layers) {
    for (auto* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (l->out > 0) fn(*l);
    for (auto& e : L.experts)
      for (auto* l : {&e.gate, &e.up, &e.down}) fn(*l);
  }
}

}  // namespace

void for_each_linear(const ModelWeights& w, const std::function<void(const Linear&)>& fn) { walk_linears(w, fn); }
void for_each_linear(ModelWeights& w, const std::function<void(Linear&)>& fn) { walk_linears(w, fn); }
void for_each_projection(const ModelWeights& w, const std::function<void(const Linear&)>& fn) { walk_projections(w, fn); }
void for_each_projection(ModelWeights& w, const std::function<void(Linear&)>& fn) { walk_projections(w, fn); }

ModelWeights bind_weights(std::shared_ptr<const SafeTensors> stp, const ModelConfig& c) {
  const SafeTensors& st = *stp;
  // The counts first: the layer and expert arrays below are sized from them.
  check_config_against_checkpoint(c, st, find_architecture(c.architecture).experts_prefix);
  TensorBinder b(&st, &c.quant);
  ModelWeights w = bind_with(b, c);
  w.owned = b.take_owned();
  check_unbound_tensors(st, b.bound());
  w.total_bytes = b.bytes();
  w.dtypes.assign(b.dtypes().begin(), b.dtypes().end());
  w.storage = std::move(stp);
  return w;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_layout(const ModelConfig& c) {
  TensorBinder b(nullptr);
  bind_with(b, c);
  return b.requested();
}

}  // namespace gale
