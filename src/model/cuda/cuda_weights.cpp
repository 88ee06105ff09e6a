// CudaBackend::prepare: every weight goes to the device once, before the KV cache is sized.
// Matrices become bf16 (converted on the host while the previous piece is copied), except FP8
// projections, which stay E4M3 with an f32 scale grid of one scale per row or per group of
// columns of each row (fp8_cols); projections that read the same input are concatenated so each
// is one product (q|k|v; gate|up, whose rows a dense model interleaves by four for the SwiGLU
// GEMV, scales with them); each MoE layer gets device tables of its experts' bf16 matrices for
// the grouped GEMM. Norm weights and biases stay f32. Integer projections (INT8 / packed INT4)
// are repacked into gemm_int's tiles on the host (int_pack), fused and interleaved the same way;
// integer MoE experts and routers are dequantized to bf16 like FP8 ones.
#include "model/cuda/cuda_backend_impl.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cuda/moe_grouped_gemm.cuh"
#include "kernels/cuda/moe_route.cuh"

namespace gale {

namespace {

// Weight (r, c) of an integer Linear as model/weights.h defines it: (q − z) · s rounded to f32.
float int_value(const Linear& l, const Linear::ScaleLayout& lay, int64_t r, int64_t c) {
  const WeightScheme& s = l.scheme;
  const int64_t si = r / lay.rows * lay.ld + c / lay.cols;
  const int64_t e = r * l.row_stride() + c;
  int q = 0, z = 0;
  if (l.dtype == DType::I8) {
    q = static_cast<const int8_t*>(l.w)[e];
  } else {
    const uint8_t b = static_cast<const uint8_t*>(l.w)[e / 2];
    q = e % 2 == 0 ? b & 0xF : b >> 4;
    z = s.zero ? static_cast<const uint8_t*>(s.zero)[si] : 8;
  }
  return float(q - z) * static_cast<const float*>(s.scale)[si];
}

// An act-order matrix's inverse permutation: [c] = the stored column holding input feature c
// (empty without in_perm). A gale::Error when in_perm is not a permutation: the gather would
// read outside x.
std::vector<int32_t> stored_columns(const Linear& l) {
  std::vector<int32_t> inv;
  if (!l.scheme.in_perm) return inv;
  inv.assign(size_t(l.in), -1);
  for (int64_t j = 0; j < l.in; ++j) {
    const int32_t c = l.scheme.in_perm[j];
    if (c < 0 || c >= l.in || inv[size_t(c)] >= 0)
      throw Error("'" + l.name + "': its act-order permutation (g_idx) is not a permutation of the input columns");
    inv[size_t(c)] = int32_t(j);
  }
  return inv;
}

// Columns per scale of an integer Linear on the device: its group, 0 per channel.
int64_t int_group(const Linear& l) { return l.scheme.scales == WeightScheme::Scales::PerGroup ? l.scheme.group : 0; }

// int_pack's row maps: rows after `offset`, or gate / up rows interleaved by four.
struct RowMap {
  int64_t offset = 0;
  int which = 0;  // interleaved: 0 gate, 1 up
};
int64_t offset_row(int64_t r, const void* ctx) { return static_cast<const RowMap*>(ctx)->offset + r; }
int64_t interleaved_row(int64_t r, const void* ctx) {
  return 8 * (r / 4) + 4 * static_cast<const RowMap*>(ctx)->which + r % 4;
}

}  // namespace

bool CudaBackend::supports(const Linear& l) const {
  const WeightScheme& s = l.scheme;
  if (l.integer_weights()) return true;  // act-order too: gemm_int gathers x (or bf16 at upload)
  if (s.scales == WeightScheme::Scales::None) return Backend::supports(l);
  return l.scaled_fp8() &&
         (s.scales == WeightScheme::Scales::PerTensor || s.scales == WeightScheme::Scales::PerChannel || s.group > 0);
}

void CudaBackend::upload_bytes(void* dst, const void* src, DType src_dtype, size_t n, DType dst_dtype,
                               const Linear* scaled) {
  // Through two pinned staging halves: the host fills (and converts into) one while the copy
  // engine drains the other.
  constexpr size_t kStage = size_t(64) << 20;
  grow_pinned(h_plan_, 2 * kStage);
  cudaEvent_t done[2];
  for (auto& e : done) cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  const size_t out_es = dtype_size(dst_dtype), in_es = dtype_size(src_dtype);
  const Linear::ScaleLayout layout = scaled ? scaled->scale_layout() : Linear::ScaleLayout{};
  // Act-order integer weights dequantized to bf16: device column c (input feature c) is the
  // stored column j with in_perm[j] = c, so the bf16 product needs no gather.
  const std::vector<int32_t> stored_col =
      scaled && scaled->integer_weights() ? stored_columns(*scaled) : std::vector<int32_t>{};
  const size_t per = kStage / out_es;
  int half = 0;
  for (size_t i0 = 0; i0 < n; i0 += per, half ^= 1) {
    const size_t cnt = std::min(per, n - i0);
    cuda_check(cudaEventSynchronize(done[half]), "upload");
    uint8_t* stage = static_cast<uint8_t*>(h_plan_.p) + size_t(half) * kStage;
    const uint8_t* s = static_cast<const uint8_t*>(src) + i0 * in_es;
    parallel_for(int64_t(cnt), [&](int64_t b, int64_t e, int) {
      if (scaled && scaled->integer_weights()) {  // integer weights, dequantized (bf16 out)
        GALE_ASSERT(dst_dtype == DType::BF16);
        uint16_t* o = reinterpret_cast<uint16_t*>(stage);
        for (int64_t j = b; j < e; ++j) {
          const int64_t g = int64_t(i0) + j;
          const int64_t c = g % scaled->in;
          const int64_t sc = stored_col.empty() ? c : stored_col[size_t(c)];
          o[j] = f32_to_bf16(int_value(*scaled, layout, g / scaled->in, sc));
        }
      } else if (scaled) {  // an FP8 weight with scales, dequantized (bf16 out)
        GALE_ASSERT(dst_dtype == DType::BF16);
        uint16_t* o = reinterpret_cast<uint16_t*>(stage);
        for (int64_t j = b; j < e; ++j) {
          const int64_t g = int64_t(i0) + j, r = g / scaled->in, c = g % scaled->in;
          const float sc = load_as_f32(scaled->scheme.scale, scaled->scheme.scale_dtype,
                                       size_t(r / layout.rows * layout.ld + c / layout.cols));
          o[j] = f32_to_bf16(load_as_f32(s, src_dtype, size_t(j)) * sc);
        }
      } else if (src_dtype == dst_dtype) {
        std::memcpy(stage + size_t(b) * out_es, s + size_t(b) * in_es, size_t(e - b) * out_es);
      } else if (dst_dtype == DType::BF16) {
        uint16_t* o = reinterpret_cast<uint16_t*>(stage);
        for (int64_t j = b; j < e; ++j) o[j] = f32_to_bf16(load_as_f32(s, src_dtype, size_t(j)));
      } else {
        float* o = reinterpret_cast<float*>(stage);
        for (int64_t j = b; j < e; ++j) o[j] = load_as_f32(s, src_dtype, size_t(j));
      }
    }, int64_t(1) << 16);
    cuda_check(cudaMemcpyAsync(static_cast<uint8_t*>(dst) + i0 * out_es, stage, cnt * out_es, cudaMemcpyHostToDevice,
                          stream_),
          "upload");
    cuda_check(cudaEventRecord(done[half], stream_), "upload");
  }
  cuda_check(cudaStreamSynchronize(stream_), "upload");
  for (auto& e : done) cudaEventDestroy(e);
}

// Reorders n = 2I rows [gate; up] of row_bytes each in place into groups of four: rows
// 8b..8b+3 = gate rows 4b..4b+3, rows 8b+4..8b+7 = up rows 4b..4b+3 (through one temporary
// copy, freed before the KV cache is sized).
void CudaBackend::interleave4(void* rows, int64_t n, size_t row) {
  const int64_t I = n / 2;
  const size_t bytes = size_t(n) * row;
  void* tmp = nullptr;
  cuda_check(cudaDeviceSynchronize(), "weight upload");  // the staged copies into rows went out on other streams
  cuda_check(cudaMalloc(&tmp, bytes), "cudaMalloc (gate|up reorder)");
  cuda_check(cudaMemcpyAsync(tmp, rows, bytes, cudaMemcpyDeviceToDevice, stream_), "gate|up reorder");
  uint8_t* dst = static_cast<uint8_t*>(rows);
  const uint8_t* src = static_cast<const uint8_t*>(tmp);
  // Four rows at a time: gate block b to 8b, up block b to 8b + 4.
  cuda_check(cudaMemcpy2DAsync(dst, 8 * row, src, 4 * row, 4 * row, size_t(I / 4), cudaMemcpyDeviceToDevice, stream_),
        "gate|up reorder");
  cuda_check(cudaMemcpy2DAsync(dst + 4 * row, 8 * row, src + size_t(I) * row, 4 * row, 4 * row, size_t(I / 4),
                          cudaMemcpyDeviceToDevice, stream_),
        "gate|up reorder");
  cuda_check(cudaStreamSynchronize(stream_), "gate|up reorder");
  cuda_check(cudaFree(tmp), "cudaFree");
}

// The column width of the scale grid a group of matrices (one product) would have on the
// device in FP8, or 0 where they go to the device as bf16: all E4M3 with their scales (or none)
// in packed rows, K a multiple of 16, the FP8 switch on. One scale per row when every matrix
// has one per row or per tensor (width K), else the widest width dividing every matrix's
// scale groups (their 128-column blocks), which the GEMV needs to be whole 16-column chunks.
int64_t CudaBackend::fp8_cols(std::span<const Linear* const> ls) const {
  if (!opt_.fp8 || ls.empty()) return 0;
  const int64_t K = ls[0]->in;
  if (K % 16) return 0;
  int64_t g = 0;
  for (const Linear* l : ls) {
    if (l->dtype != DType::F8_E4M3 || l->in != K || !l->packed_rows()) return 0;
    if (l->scheme.scales != WeightScheme::Scales::None && !l->scaled_fp8()) return 0;
    const int64_t c = l->scale_layout().cols;
    if (c < K) g = std::gcd(g, c);
  }
  if (g == 0) return K;
  return g % 16 == 0 ? g : 0;
}

bool CudaBackend::int_device(std::span<const Linear* const> ls) const {
  if (!opt_.int_weights || ls.empty()) return false;
  const Linear& a = *ls[0];
  for (const Linear* l : ls) {
    if (!l->integer_weights() || l->dtype != a.dtype || l->in != a.in || int_group(*l) != int_group(a)) return false;
    if (bool(l->scheme.in_perm) != bool(a.scheme.in_perm)) return false;
    if (a.scheme.in_perm && !std::equal(a.scheme.in_perm, a.scheme.in_perm + a.in, l->scheme.in_perm)) return false;
  }
  return true;
}

CudaBackend::DevMatrix CudaBackend::upload_int(std::span<const Linear* const> ls, bool interleave) {
  GALE_ASSERT(int_device(ls) && (!interleave || (ls.size() == 2 && ls[0]->out == ls[1]->out && ls[0]->out % 4 == 0)));
  const Linear& a = *ls[0];
  const int bits = a.dtype == DType::I8 ? 8 : 4;
  const int64_t K = a.in, group = int_group(a);
  int64_t N = 0;
  bool zp = false;
  for (const Linear* l : ls) {
    N += l->out;
    zp |= l->scheme.zero != nullptr;
  }
  // Zero-filled: the padding of the tiles must be finite codes and zero scales (int_pack).
  std::vector<uint8_t> codes(cuda::int_code_bytes(bits, N, K), 0);
  std::vector<float> scales(cuda::int_scale_count(N, K, group), 0.0f);
  std::vector<uint8_t> zeros(zp ? scales.size() : 0, 0);
  int64_t off = 0;
  for (size_t i = 0; i < ls.size(); ++i) {
    const Linear& l = *ls[i];
    cuda::IntHostMatrix h;
    h.codes = l.w;
    h.ld = l.row_stride();
    h.scale = static_cast<const float*>(l.scheme.scale);
    h.scale_ld = l.scale_layout().ld;
    h.zero = static_cast<const uint8_t*>(l.scheme.zero);
    h.bits = bits;
    h.group = group;
    h.rows = l.out;
    h.cols = K;
    const RowMap map{off, int(i)};
    cuda::int_pack(h, N, interleave ? interleaved_row : offset_row, &map, codes.data(), scales.data(),
                   zp ? zeros.data() : nullptr);
    off += l.out;
  }
  auto put = [&](const void* src, size_t bytes) {
    void* d = device_alloc_owned(bytes);
    cuda_check(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice), "upload");
    return d;
  };
  DevMatrix m;
  m.dtype = a.dtype;
  m.im.w = put(codes.data(), codes.size());
  m.im.scale = static_cast<const float*>(put(scales.data(), scales.size() * 4));
  m.im.zero = zp ? static_cast<const uint8_t*>(put(zeros.data(), zeros.size())) : nullptr;
  m.im.bits = bits;
  m.im.N = N;
  m.im.K = K;
  m.im.group = group;
  m.im.ng = cuda::int_scales_per_row(K, group);
  if (a.scheme.in_perm) {
    stored_columns(a);  // validates it
    m.perm = static_cast<const int32_t*>(put(a.scheme.in_perm, size_t(K) * 4));
    has_perm_ = true;
  }
  int_scratch_ = std::max(int_scratch_, cuda::gemm_int_scratch_bytes(m.im));
  return m;
}

// FP8 (scols > 0): the E4M3 bytes as they are, and at scale_dst (or a buffer of its own) the
// scale grid, [out][ceil(in / scols)] f32, each entry the matrix's scale of (row, first column).
CudaBackend::DevMatrix CudaBackend::upload_matrix(const Linear& l, void* dst, float* scale_dst, int64_t scols) {
  if (auto it = wmap_.find(l.w); it != wmap_.end() && !dst) return it->second;
  DevMatrix m;
  if (scols > 0) {
    const int64_t sld = (l.in + scols - 1) / scols;
    if (!dst) dst = device_alloc_owned(size_t(l.out * l.in));
    if (!scale_dst) scale_dst = static_cast<float*>(device_alloc_owned(size_t(l.out * sld) * 4));
    upload_bytes(dst, l.w, l.dtype, size_t(l.out * l.in), l.dtype);
    std::vector<float> grid(size_t(l.out * sld), 1.0f);
    if (l.scheme.scales != WeightScheme::Scales::None) {
      const Linear::ScaleLayout lay = l.scale_layout();
      for (int64_t r = 0; r < l.out; ++r)
        for (int64_t j = 0; j < sld; ++j)
          grid[size_t(r * sld + j)] =
              load_as_f32(l.scheme.scale, l.scheme.scale_dtype, size_t(r / lay.rows * lay.ld + j * scols / lay.cols));
    }
    cuda_check(cudaMemcpy(scale_dst, grid.data(), grid.size() * 4, cudaMemcpyHostToDevice), "upload");
    m = DevMatrix{dst, DType::F8_E4M3, scale_dst, scols, sld};
  } else {
    if (!dst) dst = device_alloc_owned(size_t(l.out * l.in) * 2);
    upload_bytes(dst, l.w, l.dtype, size_t(l.out * l.in), DType::BF16,
                 l.scheme.scales == WeightScheme::Scales::None ? nullptr : &l);
    m = DevMatrix{dst};
  }
  wmap_[l.w] = m;
  return m;
}

const float* CudaBackend::upload_vector(const std::vector<float>& v) {
  if (v.empty()) return nullptr;
  if (auto it = vmap_.find(v.data()); it != vmap_.end()) return it->second;
  float* d = static_cast<float*>(device_alloc_owned(v.size() * 4));
  cuda_check(cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice), "upload");
  vmap_[v.data()] = d;
  return d;
}

void CudaBackend::prepare(const ModelConfig& cfg, const ModelWeights& w) {
  cfg_ = cfg;
  // A single matrix of a dense layer (o, down; the LM head): integer where int_device allows,
  // FP8 where fp8_cols does.
  auto single = [&](const Linear& l) {
    if (auto it = wmap_.find(l.w); it != wmap_.end()) return it->second;
    const Linear* one[] = {&l};
    if (int_device(one)) return wmap_[l.w] = upload_int(one, false);
    return upload_matrix(l, nullptr, nullptr, fp8_cols(one));
  };
  rot_dim_ = int64_t(double(cfg.head_dim) * cfg.rope.partial_rotary_factor);
  {
    size_t free = 0, total = 0;
    cuda_check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    size_t need = 0;
    const bool moe = cfg.num_experts > 0;
    auto bytes = [&](const Linear& l, bool dense) {  // as prepare lays it out below
      const Linear* one[] = {&l};
      if (dense && int_device(one)) {
        const int bits = l.dtype == DType::I8 ? 8 : 4;
        const size_t ns = cuda::int_scale_count(l.out, l.in, int_group(l));
        return cuda::int_code_bytes(bits, l.out, l.in) + ns * (l.scheme.zero ? 5 : 4);
      }
      const int64_t c = dense ? fp8_cols(one) : 0;
      return c ? size_t(l.out * l.in) + size_t(l.out * ((l.in + c - 1) / c)) * 4 : size_t(l.out * l.in) * 2;
    };
    for (const LayerWeights& L : w.layers) {
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o}) need += bytes(*l, true);
      for (const Linear* l : {&L.gate, &L.up, &L.down}) need += bytes(*l, !moe);
      need += bytes(L.router, false);
      for (const ExpertWeights& X : L.experts) need += size_t(3 * X.gate.out * X.gate.in) * 2;
    }
    need += bytes(w.lm_head, true) + size_t(cfg.vocab_size * cfg.hidden_size) * dtype_size(w.embed_dtype);
    if (need > free)
      throw Error("the model's weights (" + gib(need) + " on the device) do not fit in the free memory of " + name() + " (" +
                  gib(free) + " of " + gib(total) + ")");
    const double share = opt_.gpu_memory_utilization * double(total) - double(total - free);
    if (double(need) > share)
      throw Error("the model's weights (" + gib(need) + " on the device) exceed --gpu-memory-utilization " +
                  std::to_string(opt_.gpu_memory_utilization).substr(0, 4) + " of " + name() + " (" +
                  gib(size_t(std::max(share, 0.0))) + " available to Gale)");
  }
  // Fuses projections that read the same input into one [sum n, in] matrix (FP8 with its scale
  // grid when fp8_cols allows and `dense`: the MoE experts' grouped GEMM takes bf16 only).
  auto fuse = [&](std::initializer_list<const Linear*> ls, bool dense, bool interleave) {
    const std::span<const Linear* const> group(ls.begin(), ls.size());
    if (dense && int_device(group)) {  // integer: packed (and interleaved) in one go
      Fused f;
      static_cast<DevMatrix&>(f) = upload_int(group, interleave);
      f.n = f.im.N;
      f.count = ls.size();
      f.interleaved4 = interleave;
      std::vector<float> b;
      for (const Linear* l : ls) {
        GALE_ASSERT(!interleave || l->bias.empty());
        if (l->bias.empty()) b.insert(b.end(), size_t(l->out), 0.0f);
        else b.insert(b.end(), l->bias.begin(), l->bias.end());
        upload_vector(l->bias);
      }
      bool any_bias = false;
      for (const Linear* l : ls) any_bias |= !l->bias.empty();
      if (any_bias) {
        float* db = static_cast<float*>(device_alloc_owned(b.size() * 4));
        cuda_check(cudaMemcpy(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice), "upload");
        f.bias = db;
      }
      fused_[(*ls.begin())->w] = f;
      return;
    }
    if (dense) {  // integer weights that cannot be one device matrix: each its own product
      bool any_int = false;
      for (const Linear* l : ls) any_int |= l->integer_weights() && opt_.int_weights;
      if (any_int) {
        for (const Linear* l : ls) {
          single(*l);
          upload_vector(l->bias);
        }
        return;
      }
    }
    int64_t n = 0;
    bool any_bias = false;
    for (const Linear* l : ls) {
      n += l->out;
      any_bias |= !l->bias.empty();
    }
    const int64_t in = (*ls.begin())->in;
    const int64_t scols = dense ? fp8_cols(std::span<const Linear* const>(ls.begin(), ls.size())) : 0;
    const size_t es = scols ? 1 : 2;
    const int64_t sld = scols ? (in + scols - 1) / scols : 0;
    uint8_t* d = static_cast<uint8_t*>(device_alloc_owned(size_t(n * in) * es));
    float* sd = scols ? static_cast<float*>(device_alloc_owned(size_t(n * sld) * 4)) : nullptr;
    Fused f;
    static_cast<DevMatrix&>(f) = DevMatrix{d, scols ? DType::F8_E4M3 : DType::BF16, sd, scols ? scols : 1, sld ? sld : 1};
    f.n = n;
    f.count = ls.size();
    std::vector<float> b;
    for (const Linear* l : ls) {
      upload_matrix(*l, d, sd, scols);
      d += size_t(l->out * in) * es;
      if (sd) sd += size_t(l->out * sld);
      if (any_bias) {
        if (l->bias.empty()) b.insert(b.end(), size_t(l->out), 0.0f);
        else b.insert(b.end(), l->bias.begin(), l->bias.end());
      }
      upload_vector(l->bias);
    }
    if (any_bias) {
      float* db = static_cast<float*>(device_alloc_owned(b.size() * 4));
      cuda_check(cudaMemcpy(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice), "upload");
      f.bias = db;
    }
    fused_[(*ls.begin())->w] = f;
    if (interleave) {
      Fused& fi = fused_[(*ls.begin())->w];
      interleave4(fi.w, fi.n, size_t(in) * (fi.dtype == DType::F8_E4M3 ? 1 : 2));
      if (fi.scale) interleave4(const_cast<float*>(fi.scale), fi.n, size_t(fi.sld) * 4);
      fi.interleaved4 = true;
    }
  };
  for (const LayerWeights& L : w.layers) {
    for (const std::vector<float>* v : {&L.attn_norm, &L.ffn_norm, &L.q_norm, &L.k_norm}) upload_vector(*v);
    fuse({&L.q, &L.k, &L.v}, true, false);
    single(L.o);
    upload_vector(L.o.bias);  // linear() adds it (attention_bias)
    if (cfg.num_experts > 0) {
      upload_matrix(L.router);
      std::vector<const void*> gu, dn;
      for (const ExpertWeights& X : L.experts) {
        fuse({&X.gate, &X.up}, false, false);
        upload_matrix(X.down);
        upload_vector(X.down.bias);
        gu.push_back(fused_.at(X.gate.w).w);
        dn.push_back(wmap_.at(X.down.w).w);
      }
      auto table = [&](const std::vector<const void*>& ptrs) {
        void* d = device_alloc_owned(ptrs.size() * sizeof(void*));
        cuda_check(cudaMemcpy(d, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice), "upload");
        return static_cast<const void* const*>(d);
      };
      moe_layers_[L.router.w] = {table(gu), table(dn)};
    } else {
      const bool il = opt_.fuse_silu && L.gate.out % 4 == 0 && L.gate.out == L.up.out && L.gate.bias.empty() &&
                      L.up.bias.empty();
      fuse({&L.gate, &L.up}, true, il);
      single(L.down);
      upload_vector(L.down.bias);  // mlp_bias
    }
  }
  // MoE on the device when the kernels take the shapes (moe_route: E <= 256, top_k <= 8; the
  // grouped GEMM: dimensions multiples of 8) and the experts have no biases.
  moe_kernels_ = opt_.moe && cfg.num_experts > 0 && cfg.num_experts <= cuda::kMoeMaxExperts &&
                 cfg.num_experts_per_tok >= 1 && cfg.num_experts_per_tok <= std::min(cfg.num_experts, cuda::kMoeMaxTopK) &&
                 cfg.hidden_size % 8 == 0 && cfg.intermediate_size % 8 == 0;
  for (const LayerWeights& L : w.layers)
    for (const ExpertWeights& X : L.experts)
      moe_kernels_ = moe_kernels_ && X.gate.bias.empty() && X.up.bias.empty() && X.down.bias.empty() &&
                     X.gate.out == cfg.intermediate_size && X.down.in == cfg.intermediate_size;
  if (moe_kernels_) cuda_check(cuda::moe_grouped_gemm_init(), "grouped GEMM setup");  // not mid-capture
  upload_vector(w.final_norm);
  // The embedding table is gathered in its stored dtype; the LM head needs bf16 (a tied bf16
  // table is shared).
  if (w.embed_dtype == DType::BF16 || w.lm_head.w != w.embed) {
    embed_ = device_alloc_owned(size_t(cfg.vocab_size * cfg.hidden_size) * dtype_size(w.embed_dtype));
    upload_bytes(const_cast<void*>(embed_), w.embed, w.embed_dtype, size_t(cfg.vocab_size * cfg.hidden_size),
                 w.embed_dtype);
    embed_dtype_ = w.embed_dtype;
    if (w.lm_head.w == w.embed) wmap_[w.embed] = DevMatrix{const_cast<void*>(embed_)};
  }
  const DevMatrix head = single(w.lm_head);
  if (!embed_) {  // tied f32/f16 table: gather from the bf16 copy of the LM head
    GALE_ASSERT(head.dtype == DType::BF16 && !head.integer());
    embed_ = head.w;
    embed_dtype_ = DType::BF16;
  }
  upload_vector(w.lm_head.bias);
  // gemm_int's fallback (products of more rows than its kernel takes) dequantizes into the GEMM
  // context's scratch: grown now, so that no decode graph capture allocates it nor points into a
  // scratch that a later growth frees.
  if (int_scratch_) {
    void* p = nullptr;
    cuda_check(cuda::gemm_scratch(gemm_, int_scratch_, &p), "integer GEMM scratch");
  }
}

}  // namespace gale
