#include "model/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "comm/comm.h"
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

WeightTransform shard_tensor_parallel(int rank, int size) {
  return {"shard-tp", [rank, size](ModelConfig& c, ModelWeights& w) {
            GALE_ASSERT(size >= 1 && rank >= 0 && rank < size);
            const std::string n = std::to_string(size);
            if (c.num_experts > 0)
              throw Error("tensor parallelism of MoE models (" + std::to_string(c.num_experts) +
                          " experts) is not implemented yet; run it with --tp 1");
            if (c.num_heads % size != 0)
              throw Error(std::to_string(c.num_heads) + " attention heads do not split over --tp " + n);
            if (c.intermediate_size % size != 0)
              throw Error("the MLP's " + std::to_string(c.intermediate_size) + " columns do not split over --tp " + n);
            if (c.num_kv_heads % size != 0 && size % c.num_kv_heads != 0)
              throw Error(std::to_string(c.num_kv_heads) + " KV heads neither split over --tp " + n +
                          " nor replicate evenly (--tp a multiple of them)");
            const int64_t hd = c.head_dim, qr = c.num_heads / size, ir = c.intermediate_size / size;
            // Fewer KV heads than ranks: the size / num_kv_heads ranks whose q heads share KV head
            // j each keep a copy of it (Megatron's and vLLM's replication).
            const bool split_kv = c.num_kv_heads % size == 0;
            const int64_t kvr = split_kv ? c.num_kv_heads / size : 1;
            const int64_t kv0 = split_kv ? rank * kvr : rank / (size / c.num_kv_heads);
            size_t dropped = 0;
            auto keep = [&](Linear& l, Linear shard) {
              dropped += l.bytes() - shard.bytes();
              l = std::move(shard);
            };
            // Row-parallel: this rank's columns; the bias (added once) stays with rank 0.
            auto row_parallel = [&](Linear& l, int64_t c0, int64_t cols) {
              std::vector<float> bias = l.bias;
              keep(l, l.cols_view(c0, cols));
              if (rank == 0) l.bias = std::move(bias);
            };
            for (LayerWeights& L : w.layers) {
              keep(L.q, L.q.rows_view(rank * qr * hd, qr * hd));
              keep(L.k, L.k.rows_view(kv0 * hd, kvr * hd));
              keep(L.v, L.v.rows_view(kv0 * hd, kvr * hd));
              row_parallel(L.o, rank * qr * hd, qr * hd);
              keep(L.gate, L.gate.rows_view(rank * ir, ir));
              keep(L.up, L.up.rows_view(rank * ir, ir));
              row_parallel(L.down, rank * ir, ir);
            }
            const ShardRange v = shard_range(w.lm_head.out, rank, size);
            if (v.count == 0) throw Error("a vocabulary of " + std::to_string(w.lm_head.out) + " does not split over --tp " + n);
            const bool tied = w.lm_head.w == w.embed;
            const size_t head_bytes = w.lm_head.bytes();
            w.lm_head = w.lm_head.rows_view(v.begin, v.count);
            if (!tied) dropped += head_bytes - w.lm_head.bytes();  // the table itself stays whole
            w.total_bytes -= std::min(w.total_bytes, dropped);
            c.num_heads = qr;
            c.num_kv_heads = kvr;
            c.intermediate_size = ir;
          }};
}

WeightTransform split_pipeline_layers(int stage, int stages) {
  return {"split-pp", [stage, stages](ModelConfig& c, ModelWeights& w) {
            GALE_ASSERT(stages >= 1 && stage >= 0 && stage < stages);
            if (c.num_layers < stages)
              throw Error(std::to_string(c.num_layers) + " layers do not split over --pp " + std::to_string(stages));
            const ShardRange r = shard_range(c.num_layers, stage, stages);
            size_t dropped = 0;
            for (int64_t l = 0; l < c.num_layers; ++l)
              if (l < r.begin || l >= r.begin + r.count)
                for (const Linear* m : {&w.layers[size_t(l)].q, &w.layers[size_t(l)].k, &w.layers[size_t(l)].v,
                                        &w.layers[size_t(l)].o, &w.layers[size_t(l)].gate, &w.layers[size_t(l)].up,
                                        &w.layers[size_t(l)].down})
                  dropped += m->bytes();
            w.layers = std::vector<LayerWeights>(w.layers.begin() + r.begin, w.layers.begin() + r.begin + r.count);
            c.layer_window = std::vector<int64_t>(c.layer_window.begin() + r.begin,
                                                  c.layer_window.begin() + r.begin + r.count);
            c.num_layers = r.count;
            w.total_bytes -= std::min(w.total_bytes, dropped);
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
