#include "model/weight_binder.h"

#include "core/error.h"

namespace gale {

namespace {

bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

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
  if (bound_.insert(name).second) bytes_ += t.nbytes;
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
  const TensorInfo& t = tensor(prefix + ".weight", {out, in});
  Linear l;
  l.w = t.data;
  l.dtype = t.dtype;
  l.out = out;
  l.in = in;
  l.name = t.name;
  if (bias) l.bias = vec(prefix + ".bias", out);
  return l;
}

}  // namespace gale
