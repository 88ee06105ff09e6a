// Binding named checkpoint tensors to the model's weight structs: each tensor's shape and dtype
// checked against what config.json implies, every bound name remembered (so tensors left over
// can be checked: loader/checkpoint_check.h) and the bytes used counted. The architecture files
// (model/arch/) name their tensors through it.
#pragma once
#include <cstdint>
#include <deque>
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
  explicit TensorBinder(const SafeTensors* st) : st_(st) {}

  // The tensor `name` of exactly `shape`; throws gale::Error naming a missing tensor or a
  // shape or dtype that disagrees.
  const TensorInfo& tensor(const std::string& name, std::vector<int64_t> shape);
  bool has(const std::string& name) const { return st_ && st_->find(name); }
  // Small vectors (norm weights, biases) are converted to f32 once: a few KB per layer.
  std::vector<float> vec(const std::string& name, int64_t n);
  // "<prefix>.weight" [out, in] (+ "<prefix>.bias" [out]).
  Linear linear(const std::string& prefix, int64_t out, int64_t in, bool bias);

  const std::unordered_set<std::string>& bound() const { return bound_; }
  size_t bytes() const { return bytes_; }
  const std::set<std::string>& dtypes() const { return dtypes_; }
  // Record mode: every tensor asked for, in order.
  const std::vector<std::pair<std::string, std::vector<int64_t>>>& requested() const { return requested_; }

 private:
  const SafeTensors* st_;
  std::set<std::string> dtypes_;
  std::unordered_set<std::string> bound_;
  size_t bytes_ = 0;
  std::vector<std::pair<std::string, std::vector<int64_t>>> requested_;
  std::deque<TensorInfo> recorded_;  // record mode: stable addresses for the returned infos
};

}  // namespace gale
