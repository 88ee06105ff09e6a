// Integer weights read back through the contract's definition (model/int_quantize.h's
// int_weight), for tests that check loaded or written INT4 / INT8 matrices without the kernels.
#pragma once
#include <memory>
#include <vector>

#include "core/error.h"
#include "model/int_quantize.h"
#include "model/weights.h"

namespace gale::test {

// The [out, in] f32 weights an integer matrix stands for, in the model's input order (act-order
// columns put back: stored column j is input in_perm[j]).
inline std::vector<float> dequantize_int(const Linear& l) {
  GALE_ASSERT(l.integer_weights() && l.packed_rows());
  IntQuantSpec q;
  q.bits = l.dtype == DType::I8 ? 8 : 4;
  q.group = l.scheme.scales == WeightScheme::Scales::PerGroup ? l.scheme.group : 0;
  q.symmetric = l.scheme.zero == nullptr;
  std::vector<float> w(size_t(l.out) * size_t(l.in));
  for (int64_t r = 0; r < l.out; ++r)
    for (int64_t c = 0; c < l.in; ++c) {
      const int64_t k = l.scheme.in_perm ? l.scheme.in_perm[c] : c;
      w[size_t(r * l.in + k)] = int_weight(static_cast<const uint8_t*>(l.w), static_cast<const float*>(l.scheme.scale),
                                           static_cast<const uint8_t*>(l.scheme.zero), q, l.in, r, c);
    }
  return w;
}

// Every integer projection of w replaced by its dequantized F32 matrix (owned by w): the model
// the checkpoint stands for, runnable on any backend.
inline void dequantize_int_projections(ModelWeights& w) {
  for_each_linear(w, [&](Linear& l) {
    if (!l.integer_weights()) return;
    auto buf = std::make_shared<std::vector<float>>(dequantize_int(l));
    l.w = buf->data();
    l.dtype = DType::F32;
    l.ld = 0;
    l.scheme = WeightScheme{};
    w.owned.push_back(std::move(buf));
  });
}

}  // namespace gale::test
