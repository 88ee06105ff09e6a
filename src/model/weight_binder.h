// Binding named checkpoint tensors to the model's weight structs: each tensor's shape and dtype
// checked against what config.json implies, every bound name remembered (so tensors left over
// can be checked: loader/checkpoint_check.h) and the bytes used counted. The architecture files
// (model/arch/) name their tensors through it.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "loader/safetensors.h"
#include "model/weights.h"

namespace gale {

class TensorBinder {
 public:
  // st == nullptr: records the tensors asked for instead of binding them (their names and
  // shapes lay out a synthetic checkpoint); vectors come back as zeros, no tensor has data.
  // quant: the checkpoint's quantization_config; FP8 weights then bind with their scales.
  explicit TensorBinder(const SafeTensors* st, const QuantConfig* quant = nullptr) : st_(st), quant_(quant) {}

  // The tensor `name` of exactly `shape`; throws gale::Error naming a missing tensor or a
  // shape or dtype that disagrees.
  const TensorInfo& tensor(const std::string& name, std::vector<int64_t> shape);
  bool has(const std::string& name) const { return st_ && st_->find(name); }
  // Small vectors (norm weights, biases) are converted to f32 once: a few KB per layer.
  std::vector<float> vec(const std::string& name, int64_t n);
  // "<prefix>.weight" [out, in] (+ "<prefix>.bias" [out]); in a quantized checkpoint an FP8
  // weight with its scales ("<prefix>.weight_scale" or "weight_scale_inv", converted to f32)
  // and its input scale marked as used; an integer format's module (AWQ / GPTQ qweight,
  // compressed-tensors weight_packed or I8 weight) repacked into the layout of WeightScheme.
  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias);
  // A one-element f32 tensor when the checkpoint has it (KV cache scales), else 0.
  float optional_scalar(const std::string& name);
  // Data the binder made (scales converted to f32): ModelWeights::owned keeps it alive.
  std::vector<std::shared_ptr<const void>> take_owned() { return std::move(owned_); }

  const std::unordered_set<std::string>& bound() const { return bound_; }
  size_t bytes() const { return bytes_; }
  const std::set<std::string>& dtypes() const { return dtypes_; }
  // Record mode: every tensor asked for, in order.
  const std::vector<std::pair<std::string, std::vector<int64_t>>>& requested() const { return requested_; }

 private:
  // An integer format's tensors of module `prefix` repacked into l (model/int_checkpoint.h);
  // false when the checkpoint stores the module as a plain weight.
  bool bind_integer(const std::string& prefix, Linear& l);
  // Binds the scales of FP8 weight l ("<prefix>.weight") as quant_ says.
  void bind_scales(const std::string& prefix, Linear& l);
  // Marks a tensor used without the exact-shape check of tensor() (scales of several spellings).
  const TensorInfo& take(const std::string& name);
  // Counts t as used (once, however often it is bound).
  void mark_bound(const TensorInfo& t);

  const SafeTensors* st_;
  const QuantConfig* quant_;
  std::vector<std::shared_ptr<const void>> owned_;
  std::set<std::string> dtypes_;
  std::unordered_set<std::string> bound_;
  size_t bytes_ = 0;
  std::vector<std::pair<std::string, std::vector<int64_t>>> requested_;
  std::deque<TensorInfo> recorded_;  // record mode: stable addresses for the returned infos
};

}  // namespace gale
