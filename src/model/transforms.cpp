#include "model/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "core/thread_pool.h"

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

WeightTransform quantize_fp8_per_channel() {
  return {"quantize-fp8", [](ModelConfig&, ModelWeights& w) {
            std::vector<Linear*> todo;
            for (LayerWeights& L : w.layers) {
              for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) todo.push_back(l);
              for (ExpertWeights& X : L.experts)
                for (Linear* l : {&X.gate, &X.up, &X.down}) todo.push_back(l);
            }
            for (Linear* lp : todo) {
              Linear& l = *lp;
              if (l.out == 0 || !l.w || is_fp8(l.dtype)) continue;
              if (!l.scheme.plain())
                throw Error("'" + l.name + "' (" + describe_storage(l) + ") is quantized already");
              auto codes = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out) * size_t(l.in)]);
              auto scales = std::shared_ptr<float[]>(new float[size_t(l.out)]);
              const size_t es = dtype_size(l.dtype), stride = size_t(l.row_stride()) * es;
              const auto* src = static_cast<const uint8_t*>(l.w);
              parallel_for(l.out, [&](int64_t r0, int64_t r1, int) {
                std::vector<float> row(size_t(l.in));
                for (int64_t r = r0; r < r1; ++r) {
                  float amax = 0;
                  for (int64_t c = 0; c < l.in; ++c) {
                    row[size_t(c)] = load_as_f32(src + size_t(r) * stride, l.dtype, size_t(c));
                    amax = std::max(amax, std::fabs(row[size_t(c)]));
                  }
                  const float s = amax > 0 && std::isfinite(amax) ? amax / 448.0f : 1.0f;
                  scales[size_t(r)] = s;
                  uint8_t* out = codes.get() + size_t(r) * size_t(l.in);
                  for (int64_t c = 0; c < l.in; ++c) out[c] = f32_to_f8e4m3(row[size_t(c)] / s);
                }
              }, std::max<int64_t>(1, 4096 / std::max<int64_t>(l.in, 1)));
              w.total_bytes -= std::min(w.total_bytes, l.bytes());
              l.w = codes.get();
              l.dtype = DType::F8_E4M3;
              l.ld = 0;
              l.scheme.scales = WeightScheme::Scales::PerChannel;
              l.scheme.scale = scales.get();
              l.scheme.scale_dtype = DType::F32;
              w.total_bytes += l.bytes() + size_t(l.out) * sizeof(float);
              w.owned.push_back(std::move(codes));
              w.owned.push_back(std::move(scales));
            }
            if (std::find(w.dtypes.begin(), w.dtypes.end(), "F8_E4M3") == w.dtypes.end()) w.dtypes.push_back("F8_E4M3");
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
