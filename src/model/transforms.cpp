#include "model/transforms.h"

#include <cstring>
#include <memory>

#include "core/error.h"

namespace gale {

WeightTransform identity_transform() {
  return {"identity", [](ModelConfig&, ModelWeights&) {}};
}

WeightTransform pack_rows() {
  return {"pack-rows", [](ModelConfig&, ModelWeights& w) {
            for_each_linear(w, [&](Linear& l) {
              if (l.packed_rows() || !l.w) return;
              if (!l.scheme.plain())
                throw Error("'" + l.name + "' (" + describe_storage(l) + ") has scales; only plain rows are repacked");
              const size_t row_bytes = size_t(l.in) * dtype_size(l.dtype);
              const size_t stride = size_t(l.row_stride()) * dtype_size(l.dtype);
              auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[row_bytes * size_t(l.out)]);
              const auto* src = static_cast<const uint8_t*>(l.w);
              for (int64_t r = 0; r < l.out; ++r)
                std::memcpy(buf.get() + size_t(r) * row_bytes, src + size_t(r) * stride, row_bytes);
              l.w = buf.get();
              l.ld = 0;
              w.owned.push_back(std::move(buf));
            });
          }};
}

void apply_transforms(std::span<const WeightTransform> ts, ModelConfig& cfg, ModelWeights& w) {
  for (const WeightTransform& t : ts) {
    try {
      t.apply(cfg, w);
    } catch (const Error& e) {
      throw Error("transform '" + t.name + "': " + e.what());
    }
  }
}

}  // namespace gale
