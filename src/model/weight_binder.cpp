#include "model/weight_binder.h"

#include "core/error.h"
#include "model/int_checkpoint.h"

namespace gale {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

const TensorInfo& TensorBinder::tensor(const std::string& name, std::vector<int64_t> shape) {
  if (!st_) {
    requested_.push_back({name, shape});
    TensorInfo& t = recorded_.emplace_back();
    t.name = name;
    t.shape = std::move(shape);
    return t;
  }
  const TensorInfo& t = st_->get(name);
  if (!is_float_dtype(t.dtype))
    throw Error("tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                ", expected a floating-point dtype (F32, F16, BF16, F8_E4M3, F8_E5M2)");
  if (t.shape != shape)
    throw Error("tensor '" + name + "' has shape " + shape_str(t.shape) + " but config.json implies " +
                shape_str(shape));
  dtypes_.insert(std::string(dtype_name(t.dtype)));
  mark_bound(t);
  return t;
}

std::vector<float> TensorBinder::vec(const std::string& name, int64_t n) {
  const TensorInfo& t = tensor(name, {n});
  std::vector<float> v(static_cast<size_t>(n));
  if (!st_) return v;  // record mode: no data behind it
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = load_as_f32(t.data, t.dtype, size_t(i));
  return v;
}

Linear TensorBinder::linear(const std::string& prefix, int64_t out, int64_t in, bool bias) {
  Linear l;
  l.out = out;
  l.in = in;
  if (!(quant_ && quant_->integer() && st_ && bind_integer(prefix, l))) {
    const TensorInfo& t = tensor(prefix + ".weight", {out, in});
    l.w = t.data;
    l.dtype = t.dtype;
    l.name = t.name;
    if (quant_ && quant_->integer() && st_ && is_fp8(t.dtype))
      throw Error("tensor '" + t.name + "' is " + std::string(dtype_name(t.dtype)) + " in a checkpoint of " +
                  quant_->describe() + ", which has no FP8 scales");
    if (quant_ && quant_->quantized() && !quant_->integer() && st_) bind_scales(prefix, l);
  }
  if (bias) l.bias = vec(prefix + ".bias", out);
  return l;
}

bool TensorBinder::bind_integer(const std::string& prefix, Linear& l) {
  const IntTensorNames n = int_tensor_names(*quant_, prefix);
  const TensorInfo* w = st_->find(n.weight);
  // No integer values: a module the config leaves in 16 bits (ignore / modules_to_not_convert),
  // bound as a plain weight; a stray scale or zero point beside it is refused as unbound
  // (loader/checkpoint_check.h).
  if (!w) return false;
  if (w->name == prefix + ".weight" && is_float_dtype(w->dtype)) return false;  // int-quantized's kept modules
  IntSource src;
  src.weight = w;
  auto opt = [&](const std::string& name) { return name.empty() ? nullptr : st_->find(name); };
  src.zeros = opt(n.zeros);
  src.scales = opt(n.scales);
  src.g_idx = opt(n.g_idx);
  src.shape = opt(n.shape);
  const IntMatrix m = repack_int_weights(*quant_, prefix, l.out, l.in, src);
  for (const TensorInfo* t : {src.weight, src.zeros, src.scales, src.g_idx, src.shape})
    if (t) mark_bound(*t);
  m.apply(l);
  m.keep(owned_);
  l.name = w->name;
  dtypes_.insert(std::string(dtype_name(w->dtype)));
  return true;
}

const TensorInfo& TensorBinder::take(const std::string& name) {
  const TensorInfo& t = st_->get(name);
  if (!is_float_dtype(t.dtype) || is_fp8(t.dtype))
    throw Error("tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) + ", expected F32, F16 or BF16");
  mark_bound(t);
  return t;
}

void TensorBinder::mark_bound(const TensorInfo& t) {
  if (bound_.insert(t.name).second) bytes_ += t.nbytes;
}

float TensorBinder::optional_scalar(const std::string& name) {
  if (!has(name)) return 0.0f;
  const TensorInfo& t = take(name);
  if (t.numel() != 1) throw Error("tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected one value");
  return load_as_f32(t.data, t.dtype, 0);
}

void TensorBinder::bind_scales(const std::string& prefix, Linear& l) {
  using G = QuantConfig::Granularity;
  const std::string sname = prefix + "." + quant_->scale_suffix();
  if (!has(sname)) {
    if (is_fp8(l.dtype))
      throw Error("tensor '" + prefix + ".weight' is " + std::string(dtype_name(l.dtype)) + " but the checkpoint has no '" +
                  sname + "' for it (" + quant_->describe() + ")");
    return;  // a module the config leaves in 16 bits (ignore / modules_to_not_convert)
  }
  if (!is_fp8(l.dtype))
    throw Error("'" + sname + "' scales '" + prefix + ".weight', which is " + std::string(dtype_name(l.dtype)) +
                ", not FP8");
  const TensorInfo& t = take(sname);
  const int64_t b = quant_->block;
  std::vector<int64_t> want;  // the layout the config's granularity implies
  const int64_t numel = t.numel();
  switch (quant_->weights) {
    case G::Tensor:
      if (numel != 1) want = {1};
      l.scheme.scales = WeightScheme::Scales::PerTensor;
      break;
    case G::Channel:
      if (!(t.shape == std::vector<int64_t>{l.out, 1} || t.shape == std::vector<int64_t>{l.out})) want = {l.out, 1};
      l.scheme.scales = WeightScheme::Scales::PerChannel;
      break;
    case G::Block: {
      const std::vector<int64_t> blocks = {(l.out + b - 1) / b, (l.in + b - 1) / b};
      if (t.shape != blocks) want = blocks;
      l.scheme.scales = WeightScheme::Scales::PerBlock;
      l.scheme.group = b;
      l.scheme.scale_ld = blocks[1];
      break;
    }
  }
  if (!want.empty())
    throw Error("tensor '" + sname + "' has shape " + shape_str(t.shape) + " but " + quant_->describe() +
                " implies " + shape_str(want));
  auto scales = std::make_shared<std::vector<float>>(size_t(numel));
  for (int64_t i = 0; i < numel; ++i) (*scales)[size_t(i)] = load_as_f32(t.data, t.dtype, size_t(i));
  l.scheme.scale = scales->data();
  l.scheme.scale_dtype = DType::F32;
  owned_.push_back(std::move(scales));
  // Static activation scales belong to W8A8 kernels; the f32 / bf16 activations here do not
  // need them, but they are part of the format, not stray tensors.
  if (has(prefix + ".input_scale")) take(prefix + ".input_scale");
}

}  // namespace gale
