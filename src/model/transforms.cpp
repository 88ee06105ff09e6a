#include "model/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "model/fp8_quantize.h"

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

WeightTransform quantize_fp8_per_channel(const NamePatterns& keep_16bit, bool lm_head) {
  return {"quantize-fp8", [keep_16bit, lm_head](ModelConfig&, ModelWeights& w) {
            std::vector<bool> used(keep_16bit.patterns().size(), false);
            auto quantize = [&](Linear& l) {
              if (!l.w || is_fp8(l.dtype)) return;
              if (const int k = keep_16bit.match_index(l.name); k >= 0) {
                used[size_t(k)] = true;
                return;
              }
              if (!l.scheme.plain())
                throw Error("'" + l.name + "' (" + describe_storage(l) + ") is quantized already");
              auto codes = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out) * size_t(l.in)]);
              auto scales = std::shared_ptr<float[]>(new float[size_t(l.out)]);
              quantize_fp8(l.w, l.dtype, l.out, l.in, l.row_stride(), Fp8Granularity::Channel, 0, codes.get(),
                           scales.get());
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
            };
            for_each_projection(w, quantize);
            // A tied head gets codes of its own (the embedding table is gathered as stored), so
            // the bytes of its codes and scales are added, not swapped for the table's.
            // A tied head answers to --keep-16bit as "lm_head" too (its tensor is the table's).
            const int keep_head = keep_16bit.match_index("lm_head.weight");
            if (keep_head >= 0) used[size_t(keep_head)] = true;
            if (lm_head && keep_head < 0) {
              const Linear head = w.lm_head;
              quantize(w.lm_head);
              if (head.w == w.embed && w.lm_head.w != head.w) w.total_bytes += head.bytes();
            }
            for (size_t k = 0; k < used.size(); ++k)
              if (!used[k])
                throw Error("--keep-16bit '" + keep_16bit.patterns()[k] +
                            "' matches no layer projection (MoE routers are never quantized, the LM head only with "
                            "--quantize-lm-head)");
            if (std::find(w.dtypes.begin(), w.dtypes.end(), "F8_E4M3") == w.dtypes.end()) w.dtypes.push_back("F8_E4M3");
          }};
}

namespace {

// l (a 16/32-bit matrix) replaced by its integer codes under spec; the buffers go to w.owned.
void quantize_int_linear(Linear& l, const IntQuantSpec& spec, ModelWeights& w) {
  if (spec.bits == 4 && l.in % 2 != 0)
    throw Error("'" + l.name + "' has " + std::to_string(l.in) + " input columns; 4-bit codes pack two per byte");
  const int64_t spr = int_scales_per_row(spec, l.in), bpr = int_code_bytes_per_row(spec, l.in);
  const size_t n_scales = size_t(l.out) * size_t(spr);
  auto codes = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out) * size_t(bpr)]);
  auto scales = std::shared_ptr<float[]>(new float[n_scales]);
  std::shared_ptr<uint8_t[]> zeros;
  if (!spec.symmetric) zeros = std::shared_ptr<uint8_t[]>(new uint8_t[n_scales]);
  quantize_int(l.w, l.dtype, l.out, l.in, l.row_stride(), spec, nullptr, codes.get(), scales.get(), zeros.get());
  const bool tied = l.w == w.embed;  // the embedding table stays, and stays counted
  if (!tied) w.total_bytes -= std::min(w.total_bytes, l.bytes());
  l.w = codes.get();
  l.dtype = spec.bits == 8 ? DType::I8 : DType::U8;
  l.ld = 0;
  WeightScheme& sc = l.scheme;
  sc.scales = spec.group > 0 ? WeightScheme::Scales::PerGroup : WeightScheme::Scales::PerChannel;
  sc.group = spec.group;
  sc.scale_ld = 0;
  sc.scale = scales.get();
  sc.scale_dtype = DType::F32;
  sc.zero = zeros.get();
  sc.zero_dtype = DType::U8;
  sc.packing = spec.bits == 4 ? WeightScheme::Packing::U4 : WeightScheme::Packing::None;
  sc.in_perm = nullptr;
  w.total_bytes += l.bytes() + n_scales * (sizeof(float) + (zeros ? 1 : 0));
  w.owned.push_back(std::move(codes));
  w.owned.push_back(std::move(scales));
  if (zeros) w.owned.push_back(std::move(zeros));
}

}  // namespace

WeightTransform quantize_int_weights(const IntQuantSpec& spec, const NamePatterns& keep_16bit, bool lm_head) {
  const std::string name = spec.bits == 8 ? "quantize-int8" : "quantize-int4";
  return {name, [spec, keep_16bit, lm_head](ModelConfig&, ModelWeights& w) {
            std::vector<bool> used(keep_16bit.patterns().size(), false);
            auto quantizable = [](const Linear& l) {
              if (!l.w || is_fp8(l.dtype) || l.integer_weights()) return false;  // quantized already
              if (!l.scheme.plain() || !is_float_dtype(l.dtype))
                throw Error("'" + l.name + "' (" + describe_storage(l) + ") is quantized already");
              return true;
            };
            for_each_projection(w, [&](Linear& l) {
              if (!quantizable(l)) return;
              if (const int k = keep_16bit.match_index(l.name); k >= 0) {
                used[size_t(k)] = true;
                return;
              }
              quantize_int_linear(l, spec, w);
            });
            for (size_t k = 0; k < used.size(); ++k)
              if (!used[k])
                throw Error("--keep-16bit '" + keep_16bit.patterns()[k] +
                            "' matches no layer projection (the LM head and MoE routers are never quantized)");
            if (lm_head && w.lm_head.out > 0 && quantizable(w.lm_head)) quantize_int_linear(w.lm_head, spec, w);
            const char* dt = spec.bits == 8 ? "I8" : "U8";
            if (std::find(w.dtypes.begin(), w.dtypes.end(), dt) == w.dtypes.end()) w.dtypes.push_back(dt);
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
