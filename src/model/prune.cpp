#include "model/prune.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/thread_pool.h"
#include "loader/name_patterns.h"
#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"
#include "model/arch/arch.h"
#include "model/calibration.h"
#include "model/checkpoint_folder.h"
#include "model/weights.h"

namespace gale {

namespace fs = std::filesystem;
using json = nlohmann::json;

PruneMethod parse_prune_method(const std::string& s) {
  if (s == "magnitude") return PruneMethod::Magnitude;
  if (s == "wanda") return PruneMethod::Wanda;
  if (s == "2:4") return PruneMethod::Semi24;
  if (s == "ffn-channels") return PruneMethod::FfnChannels;
  if (s == "heads") return PruneMethod::Heads;
  if (s == "layers") return PruneMethod::Layers;
  throw Error("--method must be magnitude, wanda, 2:4, ffn-channels, heads or layers (got '" + s + "')");
}

const char* prune_method_name(PruneMethod m) {
  switch (m) {
    case PruneMethod::Magnitude: return "magnitude";
    case PruneMethod::Wanda: return "wanda";
    case PruneMethod::Semi24: return "2:4";
    case PruneMethod::FfnChannels: return "ffn-channels";
    case PruneMethod::Heads: return "heads";
    case PruneMethod::Layers: return "layers";
  }
  return "?";
}

bool prune_needs_calibration(PruneMethod m, const std::string& score) {
  return m != PruneMethod::Magnitude && !(m == PruneMethod::Semi24 && score != "wanda");
}

std::vector<float> prune_scores(std::span<const float> w, int64_t rows, int64_t cols, std::span<const float> in_norm) {
  GALE_ASSERT(int64_t(w.size()) == rows * cols && (in_norm.empty() || int64_t(in_norm.size()) == cols));
  std::vector<float> s(w.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float a = std::fabs(w[size_t(r * cols + c)]);
      s[size_t(r * cols + c)] = in_norm.empty() ? a : a * in_norm[size_t(c)];
    }
  return s;
}

std::vector<uint8_t> prune_mask_per_row(std::span<const float> scores, int64_t rows, int64_t cols, double sparsity) {
  GALE_ASSERT(int64_t(scores.size()) == rows * cols && sparsity >= 0 && sparsity < 1);
  const int64_t k = int64_t(std::floor(sparsity * double(cols)));
  std::vector<uint8_t> mask(scores.size(), 0);
  std::vector<int64_t> idx(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scores.data() + r * cols;
    std::iota(idx.begin(), idx.end(), int64_t(0));
    // (score, column) ascending: the first k go.
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(),
                     [s](int64_t a, int64_t b) { return s[a] < s[b] || (s[a] == s[b] && a < b); });
    for (int64_t i = 0; i < k; ++i) mask[size_t(r * cols + idx[size_t(i)])] = 1;
  }
  return mask;
}

std::vector<uint8_t> prune_mask_24(std::span<const float> scores, int64_t rows, int64_t cols) {
  GALE_ASSERT(int64_t(scores.size()) == rows * cols && cols % 4 == 0);
  std::vector<uint8_t> mask(scores.size(), 0);
  for (size_t g = 0; g < scores.size(); g += 4) {
    int order[4] = {0, 1, 2, 3};
    const float* s = scores.data() + g;
    std::sort(order, order + 4, [s](int a, int b) { return s[a] < s[b] || (s[a] == s[b] && a < b); });
    mask[g + size_t(order[0])] = mask[g + size_t(order[1])] = 1;
  }
  return mask;
}

std::vector<int64_t> keep_most_important(std::span<const double> importance, int64_t keep) {
  GALE_ASSERT(keep >= 0 && keep <= int64_t(importance.size()));
  std::vector<int64_t> idx(importance.size());
  std::iota(idx.begin(), idx.end(), int64_t(0));
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return importance[size_t(a)] > importance[size_t(b)]; });
  idx.resize(size_t(keep));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// A matrix W [out, in] narrowed to the input columns `keep`, refit by least squares to give the
// full matrix's outputs on the recorded inputs X [n, in]:
//   W' = argmin Σ_t ‖W x_t − W' x_t,K‖² + λ ‖W' − W[:, K]‖²
//      = (W C[:, K] + λ W[:, K]) (C[K, K] + λI)⁻¹,   C = Σ_t x_t x_tᵀ,
// λ = 1 % of C[K, K]'s mean diagonal (SparseGPT's dampening), pulling toward the kept columns as
// they were (so columns whose removal loses nothing come back unchanged); solved by Cholesky in
// double, written in W's dtype.
namespace {

// C += Σ_r x_r x_rᵀ over the rows of x [n, in], upper triangle only.
void gram_add(std::vector<double>& C, std::span<const float> x, int64_t in) {
  const int64_t n = int64_t(x.size()) / in;
  parallel_for(in, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) {
      double* ci = C.data() + i * in;
      for (int64_t r = 0; r < n; ++r) {
        const float* xr = x.data() + r * in;
        const double a = xr[i];
        if (a == 0) continue;
        for (int64_t j = i; j < in; ++j) ci[j] += a * double(xr[j]);
      }
    }
  });
}

// The refit from C's upper triangle (prune_refit_columns' rule).
std::vector<float> refit_from_gram(std::span<const float> w, int64_t out, int64_t in, std::vector<double>& C,
                                   std::span<const int64_t> keep) {
  const int64_t k = int64_t(keep.size());
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < i; ++j) C[size_t(i * in + j)] = C[size_t(j * in + i)];
  std::vector<double> B(size_t(out * k), 0.0);  // W C[:, K]
  parallel_for(out, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const double wc = w[size_t(r * in + c)];
        for (int64_t j = 0; j < k; ++j) B[size_t(r * k + j)] += wc * C[size_t(c * in + keep[size_t(j)])];
      }
  });
  std::vector<double> G(size_t(k * k));
  double mean_diag = 0;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) G[size_t(i * k + j)] = C[size_t(keep[size_t(i)] * in + keep[size_t(j)])];
    mean_diag += G[size_t(i * k + i)];
  }
  const double lambda = 0.01 * std::max(mean_diag / double(k), 1e-12);
  for (int64_t i = 0; i < k; ++i) G[size_t(i * k + i)] += lambda;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < k; ++j) B[size_t(r * k + j)] += lambda * w[size_t(r * in + keep[size_t(j)])];
  // Cholesky G = L Lᵀ (in place, lower triangle).
  for (int64_t j = 0; j < k; ++j) {
    double d = G[size_t(j * k + j)];
    for (int64_t p = 0; p < j; ++p) d -= G[size_t(j * k + p)] * G[size_t(j * k + p)];
    if (!(d > 0)) throw Error("least-squares refit: the calibration activations are degenerate");
    d = std::sqrt(d);
    G[size_t(j * k + j)] = d;
    for (int64_t i = j + 1; i < k; ++i) {
      double v = G[size_t(i * k + j)];
      for (int64_t p = 0; p < j; ++p) v -= G[size_t(i * k + p)] * G[size_t(j * k + p)];
      G[size_t(i * k + j)] = v / d;
    }
  }
  std::vector<float> res(size_t(out * k));
  parallel_for(out, [&](int64_t r0, int64_t r1, int) {
    std::vector<double> y(static_cast<size_t>(k));
    for (int64_t r = r0; r < r1; ++r) {
      const double* b = B.data() + r * k;
      for (int64_t i = 0; i < k; ++i) {  // L y = b
        double v = b[i];
        for (int64_t p = 0; p < i; ++p) v -= G[size_t(i * k + p)] * y[size_t(p)];
        y[size_t(i)] = v / G[size_t(i * k + i)];
      }
      for (int64_t i = k - 1; i >= 0; --i) {  // Lᵀ z = y
        double v = y[size_t(i)];
        for (int64_t p = i + 1; p < k; ++p) v -= G[size_t(p * k + i)] * y[size_t(p)];
        y[size_t(i)] = v / G[size_t(i * k + i)];
      }
      for (int64_t j = 0; j < k; ++j) res[size_t(r * k + j)] = float(y[size_t(j)]);
    }
  });
  return res;
}

}  // namespace

std::vector<float> prune_refit_columns(std::span<const float> w, int64_t out, int64_t in, std::span<const float> x,
                                       std::span<const int64_t> keep) {
  GALE_ASSERT(int64_t(w.size()) == out * in && int64_t(x.size()) % in == 0);
  std::vector<double> C(size_t(in * in), 0.0);
  gram_add(C, x, in);
  return refit_from_gram(w, out, in, C, keep);
}

namespace {

std::vector<float> tensor_f32(const TensorInfo& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_f32(t.data, t.dtype, i);
  return v;
}

// The rows `rows` (all when empty) and columns `cols` (all when empty) of a 1-D or 2-D tensor,
// byte for byte.
std::vector<uint8_t> select(const TensorInfo& t, const std::vector<int64_t>& rows, const std::vector<int64_t>& cols) {
  const size_t es = dtype_size(t.dtype);
  const int64_t nr = t.shape[0], nc = t.shape.size() == 2 ? t.shape[1] : 1;
  std::vector<int64_t> r = rows, c = cols;
  if (r.empty()) r.resize(size_t(nr)), std::iota(r.begin(), r.end(), int64_t(0));
  if (c.empty()) c.resize(size_t(nc)), std::iota(c.begin(), c.end(), int64_t(0));
  std::vector<uint8_t> out(r.size() * c.size() * es);
  uint8_t* p = out.data();
  for (int64_t i : r)
    for (int64_t j : c) {
      std::memcpy(p, t.data + size_t(i * nc + j) * es, es);
      p += es;
    }
  return out;
}

// f32 values in a 16/32-bit dtype's bytes (rounded to nearest even).
std::vector<uint8_t> encode_as(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> b(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::F32) {
      std::memcpy(b.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = dt == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
  }
  return b;
}

// Per input column of each recorded projection, over every calibration window: Σ x² and Σ |x|.
struct ColumnStats {
  std::vector<double> sumsq, sumabs;
  int64_t rows = 0;
  std::vector<double> l2() const {
    std::vector<double> v(sumsq.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = std::sqrt(sumsq[i]);
    return v;
  }
  std::vector<double> mean_abs() const {
    std::vector<double> v(sumabs.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = sumabs[i] / double(std::max<int64_t>(rows, 1));
    return v;
  }
};

// Runs the calibration (model/calibration.h) window by window, accumulating the column
// statistics of the projections `only` (their input width from the checkpoint) and handing each
// window's record to `each` as well.
std::map<std::string, ColumnStats> calibrate(const PruneOptions& o, const ModelConfig& cfg,
                                             const std::shared_ptr<SafeTensors>& st, const std::set<std::string>& only,
                                             bool norms = false,
                                             const std::function<void(const CalibrationRecord&)>& each = {}) {
  std::map<std::string, ColumnStats> stats;
  record_calibration(cfg, bind_weights(st, cfg), o.calib_tokens, o.calib_max_tokens, norms, only,
                     [&](const CalibrationRecord& r) {
                       for (const auto& [name, x] : r.inputs) {
                         if (name.empty() || !only.count(name)) continue;  // a made-up matrix has no name
                         const int64_t in = st->find(name)->shape[1], n = int64_t(x.size()) / in;
                         ColumnStats& c = stats[name];
                         c.sumsq.resize(size_t(in), 0.0);
                         c.sumabs.resize(size_t(in), 0.0);
                         c.rows += n;
                         for (int64_t i = 0; i < n; ++i)
                           for (int64_t j = 0; j < in; ++j) {
                             const double v = x[size_t(i * in + j)];
                             c.sumsq[size_t(j)] += v * v;
                             c.sumabs[size_t(j)] += std::fabs(v);
                           }
                       }
                       if (each) each(r);
                     });
  for (const std::string& name : only)
    if (!name.empty() && !stats.count(name))
      throw Error("no calibration activations were recorded for '" + name + "'");
  return stats;
}

// ‖W[:, c]‖₂ of every column of a [out, in] tensor.
std::vector<double> column_norms(const TensorInfo& t) {
  const int64_t out = t.shape[0], in = t.shape[1];
  std::vector<double> s(size_t(in), 0.0);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const double v = load_as_f32(t.data, t.dtype, size_t(r * in + c));
      s[size_t(c)] += v * v;
    }
  for (double& v : s) v = std::sqrt(v);
  return s;
}

// One tensor of the result: its entry and how its bytes are made (empty `make`: src as stored).
struct OutTensor {
  const TensorInfo* src = nullptr;
  std::vector<int64_t> shape;
  std::function<std::vector<uint8_t>()> make;
};

const TensorInfo& tensor_of(const SafeTensors& st, const std::string& name) {
  const TensorInfo* t = st.find(name);
  if (!t) throw Error("the checkpoint has no tensor '" + name + "'");
  return *t;
}

int64_t removed_count(double sparsity, int64_t n, const char* what) {
  const int64_t r = std::llround(sparsity * double(n));
  if (r >= n) throw Error("--sparsity " + std::to_string(sparsity) + " would remove all " + std::to_string(n) + " " + what);
  return r;
}

std::string list_str(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
  return s;
}

struct Plan {
  std::map<std::string, OutTensor> out;  // by output name
  json config;
  PruneSummary sum;
  std::shared_ptr<uint64_t> zeros = std::make_shared<uint64_t>(0);  // counted as the masks are applied
};

void check_dense(const ModelConfig& cfg, const ModelWeights& w, PruneMethod m, bool mlp, bool attn) {
  if (mlp && cfg.num_experts > 0) throw Error(std::string("--method ") + prune_method_name(m) + " supports dense MLPs (this model has experts)");
  for (const LayerWeights& L : w.layers) {
    if (mlp && L.gate.name == L.up.name)
      throw Error(std::string("--method ") + prune_method_name(m) + " does not support a fused gate|up tensor ('" + L.gate.name + "')");
    if (attn && (L.q.name == L.k.name || L.k.name == L.v.name))
      throw Error(std::string("--method ") + prune_method_name(m) + " does not support a fused q|k|v tensor ('" + L.q.name + "')");
  }
}

// magnitude, wanda, 2:4: every projection's zeros, shapes unchanged.
void plan_unstructured(const PruneOptions& o, PruneMethod m, const ModelConfig& cfg, const ModelWeights& w,
                       const std::shared_ptr<SafeTensors>& st, Plan& p) {
  const bool wanda = m == PruneMethod::Wanda || (m == PruneMethod::Semi24 && o.score == "wanda");
  std::set<std::string> targets;
  for_each_projection(w, [&](const Linear& l) {
    const TensorInfo& t = tensor_of(*st, l.name);
    if (t.shape.size() != 2) throw Error("'" + l.name + "' is not a matrix");
    if (m == PruneMethod::Semi24 && t.shape[1] % 4 != 0)
      throw Error("2:4 needs input widths that are multiples of 4 ('" + l.name + "' has " + std::to_string(t.shape[1]) + ")");
    targets.insert(l.name);
  });
  std::shared_ptr<std::map<std::string, std::vector<float>>> norms = std::make_shared<std::map<std::string, std::vector<float>>>();
  if (wanda) {
    const std::map<std::string, ColumnStats> stats = calibrate(o, cfg, st, targets);
    for (const std::string& name : targets) {
      const std::vector<double> s = stats.at(name).l2();
      (*norms)[name].assign(s.begin(), s.end());
    }
  }
  std::shared_ptr<uint64_t> zeros = p.zeros;
  for (const std::string& name : targets) {
    OutTensor& ot = p.out.at(name);
    const TensorInfo* t = ot.src;
    const double sparsity = p.sum.sparsity;
    ot.make = [t, m, sparsity, norms, name, zeros]() {
      const int64_t rows = t->shape[0], cols = t->shape[1];
      const std::vector<float> wf = tensor_f32(*t);
      const auto it = norms->find(name);
      const std::vector<float> scores =
          prune_scores(wf, rows, cols, it == norms->end() ? std::span<const float>() : std::span<const float>(it->second));
      const std::vector<uint8_t> mask =
          m == PruneMethod::Semi24 ? prune_mask_24(scores, rows, cols) : prune_mask_per_row(scores, rows, cols, sparsity);
      std::vector<uint8_t> b(t->data, t->data + t->nbytes);
      const size_t es = dtype_size(t->dtype);
      for (size_t i = 0; i < mask.size(); ++i)
        if (mask[i]) std::memset(b.data() + i * es, 0, es), ++*zeros;
      return b;
    };
  }
  p.sum.matrices = int64_t(targets.size());
  // compressed-tensors' sparsity metadata: the zeros are stored ("dense"), so any loader reads
  // the weights as they are.
  uint64_t total = 0, target_elems = 0;
  for (const auto& [name, t] : st->tensors()) total += uint64_t(t.numel());
  for (const std::string& name : targets) {
    const TensorInfo& t = *st->find(name);
    target_elems += m == PruneMethod::Semi24 ? uint64_t(t.numel()) / 2
                                             : uint64_t(t.shape[0]) * uint64_t(std::floor(p.sum.sparsity * double(t.shape[1])));
  }
  p.config["quantization_config"] = {
      {"quant_method", "compressed-tensors"},
      {"format", "dense"},
      {"sparsity_config",
       {{"format", "dense"},
        {"sparsity_structure", m == PruneMethod::Semi24 ? "2:4" : "unstructured"},
        {"global_sparsity", total ? double(target_elems) / double(total) : 0.0},
        {"targets", {"Linear"}},
        {"ignore", {"lm_head"}},
        {"registry_requires_subclass", false}}}};
  p.sum.change = std::to_string(targets.size()) + " projections " +
                 (m == PruneMethod::Semi24 ? std::string("2:4 sparse") : std::to_string(int(std::lround(p.sum.sparsity * 100))) + "% zeros per row") +
                 (wanda ? " (Wanda scores)" : " (magnitude)");
}

std::string bias_name(const Linear& l) { return module_name_of(l.name) + ".bias"; }

void plan_ffn_channels(const PruneOptions& o, const ModelConfig& cfg, const ModelWeights& w,
                       const std::shared_ptr<SafeTensors>& st, Plan& p) {
  check_dense(cfg, w, PruneMethod::FfnChannels, true, false);
  const int64_t I = cfg.intermediate_size, keep = I - removed_count(p.sum.sparsity, I, "channels");
  std::set<std::string> downs;
  for (const LayerWeights& L : w.layers) downs.insert(L.down.name);
  // The refit's Gram matrices Σ h hᵀ, one [I, I] per layer, accumulated window by window.
  std::map<std::string, std::vector<double>> gram;
  const std::map<std::string, ColumnStats> stats =
      calibrate(o, cfg, st, downs, false, [&](const CalibrationRecord& r) {
        if (!o.refit || keep == I) return;
        for (const std::string& d : downs) {
          std::vector<double>& C = gram[d];
          C.resize(size_t(I * I), 0.0);
          gram_add(C, r.inputs.at(d), I);
        }
      });
  for (const LayerWeights& L : w.layers) {
    const TensorInfo& down = tensor_of(*st, L.down.name);
    const std::vector<double> act = stats.at(L.down.name).l2(), wn = column_norms(down);
    std::vector<double> imp(static_cast<size_t>(I));
    for (int64_t j = 0; j < I; ++j) imp[size_t(j)] = act[size_t(j)] * wn[size_t(j)];
    const std::vector<int64_t> k = keep_most_important(imp, keep);
    for (const Linear* l : {&L.gate, &L.up}) {
      OutTensor& ot = p.out.at(l->name);
      ot.shape = {keep, ot.src->shape[1]};
      const TensorInfo* t = ot.src;
      ot.make = [t, k] { return select(*t, k, {}); };
      if (auto it = p.out.find(bias_name(*l)); it != p.out.end()) {
        it->second.shape = {keep};
        const TensorInfo* b = it->second.src;
        it->second.make = [b, k] { return select(*b, k, {}); };
      }
    }
    OutTensor& ot = p.out.at(L.down.name);
    ot.shape = {ot.src->shape[0], keep};
    if (o.refit && keep < I) {
      const std::vector<float> wr = refit_from_gram(tensor_f32(*ot.src), ot.src->shape[0], I, gram.at(L.down.name), k);
      gram.erase(L.down.name);
      auto bytes = std::make_shared<std::vector<uint8_t>>(encode_as(wr, ot.src->dtype));
      ot.make = [bytes] { return *bytes; };
    } else {
      ot.make = [t = ot.src, k] { return select(*t, {}, k); };
    }
    p.sum.matrices += 3;
  }
  p.config["intermediate_size"] = keep;
  p.sum.change = "intermediate_size " + std::to_string(I) + " -> " + std::to_string(keep) + " in every layer";
}

void plan_heads(const PruneOptions& o, const ModelConfig& cfg, const ModelWeights& w,
                const std::shared_ptr<SafeTensors>& st, Plan& p) {
  check_dense(cfg, w, PruneMethod::Heads, false, true);
  const int64_t G = cfg.num_kv_heads, per = cfg.num_heads / cfg.num_kv_heads, D = cfg.head_dim;
  const int64_t keep = G - removed_count(p.sum.sparsity, G, "KV head groups");
  std::set<std::string> os;
  for (const LayerWeights& L : w.layers) os.insert(L.o.name);
  const std::map<std::string, ColumnStats> stats = calibrate(o, cfg, st, os);
  std::string removed;
  for (size_t li = 0; li < w.layers.size(); ++li) {
    const LayerWeights& L = w.layers[li];
    const TensorInfo& ot = tensor_of(*st, L.o.name);
    const int64_t in = ot.shape[1];
    const std::vector<double> act = stats.at(L.o.name).mean_abs(), wn = column_norms(ot);
    std::vector<double> imp(size_t(G), 0.0);
    for (int64_t c = 0; c < in; ++c) imp[size_t(c / D / per)] += act[size_t(c)] * wn[size_t(c)];
    const std::vector<int64_t> kg = keep_most_important(imp, keep);
    std::vector<int64_t> q_rows, kv_rows;
    for (int64_t g : kg) {
      for (int64_t r = g * per * D; r < (g + 1) * per * D; ++r) q_rows.push_back(r);
      for (int64_t r = g * D; r < (g + 1) * D; ++r) kv_rows.push_back(r);
    }
    std::vector<int64_t> gone;
    for (int64_t g = 0; g < G; ++g)
      if (!std::binary_search(kg.begin(), kg.end(), g)) gone.push_back(g);
    removed += (removed.empty() ? "" : "; ") + std::string("layer ") + std::to_string(li) + ": " + list_str(gone);
    auto rows_of = [&](const Linear& l, const std::vector<int64_t>& rows) {
      OutTensor& t = p.out.at(l.name);
      t.shape = {int64_t(rows.size()), t.src->shape[1]};
      t.make = [s = t.src, rows] { return select(*s, rows, {}); };
      if (auto it = p.out.find(bias_name(l)); it != p.out.end()) {
        it->second.shape = {int64_t(rows.size())};
        it->second.make = [b = it->second.src, rows] { return select(*b, rows, {}); };
      }
    };
    rows_of(L.q, q_rows);
    rows_of(L.k, kv_rows);
    rows_of(L.v, kv_rows);
    OutTensor& o_t = p.out.at(L.o.name);
    o_t.shape = {o_t.src->shape[0], int64_t(q_rows.size())};
    o_t.make = [s = o_t.src, q_rows] { return select(*s, {}, q_rows); };
    p.sum.matrices += 4;
  }
  p.config["num_attention_heads"] = keep * per;
  p.config["num_key_value_heads"] = keep;
  p.config["head_dim"] = D;  // hidden_size / num_attention_heads no longer gives it
  p.sum.change = "KV groups " + std::to_string(G) + " -> " + std::to_string(keep) + ", query heads " +
                 std::to_string(cfg.num_heads) + " -> " + std::to_string(keep * per) + " in every layer (removed groups: " +
                 removed + ")";
}

void plan_layers(const PruneOptions& o, const ModelConfig& cfg, const std::shared_ptr<SafeTensors>& st, Plan& p) {
  const int64_t Lc = cfg.num_layers, keep = Lc - removed_count(p.sum.sparsity, Lc, "layers");
  const std::set<std::string> none = {""};  // no projection's inputs: only the hidden states
  const int64_t H = cfg.hidden_size;
  std::vector<double> cos_sum(static_cast<size_t>(Lc), 0.0);
  int64_t rows = 0;
  calibrate(o, cfg, st, none, true, [&](const CalibrationRecord& r) {
    if (int64_t(r.norm_inputs.size()) != 2 * Lc + 1)
      throw Error("--method layers: this architecture's hidden states could not be measured layer by layer");
    rows += r.rows;
    for (int64_t l = 0; l < Lc; ++l) {
      const std::vector<float>&a = r.norm_inputs[size_t(2 * l)], &b = r.norm_inputs[size_t(2 * l + 2)];
      for (int64_t t = 0; t < r.rows; ++t) {
        double ab = 0, aa = 0, bb = 0;
        for (int64_t c = 0; c < H; ++c) {
          const double x = a[size_t(t * H + c)], y = b[size_t(t * H + c)];
          ab += x * y, aa += x * x, bb += y * y;
        }
        cos_sum[size_t(l)] += ab / std::max(std::sqrt(aa * bb), 1e-30);
      }
    }
  });
  std::vector<double> imp(static_cast<size_t>(Lc));  // 1 − mean cos(input, output): how much the layer changes its input
  for (int64_t l = 0; l < Lc; ++l) imp[size_t(l)] = 1.0 - cos_sum[size_t(l)] / double(rows);
  const std::vector<int64_t> kept = keep_most_important(imp, keep);
  std::map<int64_t, int64_t> renumber;
  for (size_t i = 0; i < kept.size(); ++i) renumber[kept[i]] = int64_t(i);
  std::vector<int64_t> gone;
  for (int64_t l = 0; l < Lc; ++l)
    if (!renumber.count(l)) gone.push_back(l);
  std::map<std::string, OutTensor> out;
  const std::string pre = "model.layers.";
  for (auto& [name, t] : p.out) {
    if (name.rfind(pre, 0) != 0) {
      out.emplace(name, std::move(t));
      continue;
    }
    const size_t dot = name.find('.', pre.size());
    const std::string num = name.substr(pre.size(), dot == std::string::npos ? std::string::npos : dot - pre.size());
    if (dot == std::string::npos || num.empty() || num.find_first_not_of("0123456789") != std::string::npos)
      throw Error("--method layers: unexpected tensor name '" + name + "'");
    const auto it = renumber.find(std::stoll(num));
    if (it == renumber.end()) continue;  // a removed layer's tensor
    out.emplace(pre + std::to_string(it->second) + name.substr(dot), std::move(t));
  }
  p.out = std::move(out);
  p.config["num_hidden_layers"] = keep;
  if (p.config.contains("layer_types") && p.config["layer_types"].is_array() && int64_t(p.config["layer_types"].size()) == Lc) {
    json lt = json::array();
    for (int64_t l : kept) lt.push_back(p.config["layer_types"][size_t(l)]);
    p.config["layer_types"] = lt;
  }
  p.sum.matrices = int64_t(gone.size()) * 7;
  p.sum.change = "layers " + std::to_string(Lc) + " -> " + std::to_string(keep) + " (removed " + list_str(gone) + ")";
}

PruneSummary write_pruned(const PruneOptions& o, PruneMethod m, const fs::path& dir) {
  ModelConfig cfg = load_model_config(o.source);
  if (cfg.quant.quantized())
    throw Error(o.source + " is quantized (" + cfg.quant.describe() + "); gale prune reads 16/32-bit checkpoints");
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(o.source));
  const ModelWeights w = bind_weights(st, cfg);
  for_each_projection(w, [&](const Linear& l) {
    if (l.dtype != DType::F32 && l.dtype != DType::F16 && l.dtype != DType::BF16)
      throw Error("'" + l.name + "' has dtype " + std::string(dtype_name(l.dtype)) + "; gale prune reads F32, F16 or BF16");
  });
  Plan p;
  p.sum.method = prune_method_name(m);
  p.sum.sparsity = o.sparsity;
  p.config = read_json_file(fs::path(o.source) / "config.json");
  if (p.config.contains("quantization_config") && !p.config["quantization_config"].is_null())
    throw Error(o.source + " has a quantization_config; gale prune reads plain 16/32-bit checkpoints");
  for (const auto& [name, t] : st->tensors()) {
    p.out.emplace(name, OutTensor{&t, t.shape, {}});
    p.sum.bytes_in += t.nbytes;
    p.sum.params_in += uint64_t(t.numel());
  }
  switch (m) {
    case PruneMethod::Magnitude:
    case PruneMethod::Wanda:
    case PruneMethod::Semi24: plan_unstructured(o, m, cfg, w, st, p); break;
    case PruneMethod::FfnChannels: plan_ffn_channels(o, cfg, w, st, p); break;
    case PruneMethod::Heads: plan_heads(o, cfg, w, st, p); break;
    case PruneMethod::Layers: plan_layers(o, cfg, st, p); break;
  }

  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, t] : p.out) {
    entries.push_back({name, t.src->dtype, t.shape});
    p.sum.params_out += uint64_t(std::accumulate(t.shape.begin(), t.shape.end(), int64_t(1), std::multiplies<int64_t>()));
  }
  uint64_t total = 0, done = 0;
  for (const SafetensorsEntry& e : entries) total += e.nbytes();
  p.sum.bytes_out = total;
  const auto shards = plan_safetensors_shards(safetensors_file_order(entries), o.max_shard_bytes);
  json weight_map = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = safetensors_shard_name(k + 1, shards.size());
    SafetensorsWriter out((dir / file).string(), shards[k]);
    for (const SafetensorsEntry& e : out.entries()) {
      if (o.progress) o.progress(done, total);
      const OutTensor& t = p.out.at(e.name);
      if (t.make) {
        const std::vector<uint8_t> b = t.make();
        GALE_ASSERT(b.size() == e.nbytes());
        out.write(b);
      } else {
        out.write({t.src->data, t.src->nbytes});
      }
      done += e.nbytes();
      weight_map[e.name] = file;
    }
    out.finish();
  }
  p.sum.files = shards.size();
  p.sum.zeros = *p.zeros;
  if (shards.size() > 1)
    write_json_file(dir / "model.safetensors.index.json", {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  write_json_file(dir / "config.json", p.config);
  copy_side_files(o.source, dir);
  try {
    const ModelConfig back = load_model_config(dir.string());
    bind_weights(std::make_shared<SafeTensors>(SafeTensors::open_dir(dir.string())), back);
  } catch (const Error& e) {
    throw Error("the pruned checkpoint would not load back (nothing written): " + std::string(e.what()));
  }
  if (o.progress) o.progress(total, total);
  return p.sum;
}

}  // namespace

PruneSummary prune_checkpoint(const PruneOptions& o) {
  const PruneMethod m = parse_prune_method(o.method);
  PruneOptions opt = o;
  if (m == PruneMethod::Semi24) {
    if (!std::isnan(o.sparsity) && o.sparsity != 0.5) throw Error("--method 2:4 zeroes half the weights; --sparsity must be 0.5 or left out");
    opt.sparsity = 0.5;
    if (!o.score.empty() && o.score != "magnitude" && o.score != "wanda")
      throw Error("--score must be magnitude or wanda (got '" + o.score + "')");
  } else {
    if (!o.score.empty()) throw Error("--score applies to --method 2:4 (wanda and magnitude are methods of their own)");
    if (std::isnan(o.sparsity)) throw Error("--sparsity is required for --method " + o.method);
  }
  if (!(opt.sparsity >= 0 && opt.sparsity < 1)) throw Error("--sparsity must be in [0, 1) (got " + std::to_string(o.sparsity) + ")");
  if (prune_needs_calibration(m, opt.score) && opt.calib_tokens.size() < 16)
    throw Error(std::string("--method ") + prune_method_name(m) + (m == PruneMethod::Semi24 ? " --score wanda" : "") +
                " measures activations: it needs --calib FILE with at least 16 tokens of text (got " +
                std::to_string(opt.calib_tokens.size()) + ")");
  if (o.source.rfind("synthetic:", 0) == 0) throw Error("gale prune reads a checkpoint folder, not " + o.source);
  if (!fs::is_directory(o.source)) throw Error("model folder " + o.source + " not found");
  PruneSummary sum;
  sum.out = write_checkpoint_folder(o.source, o.out, o.force, [&](const fs::path& dir) { sum = write_pruned(opt, m, dir); });
  return sum;
}

}  // namespace gale
