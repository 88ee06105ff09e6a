#include "model/awq_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/calibration.h"

namespace gale {

namespace {

std::vector<float> to_f32(const Linear& l) {
  std::vector<float> w(static_cast<size_t>(l.out * l.in));
  for (int64_t r = 0; r < l.out; ++r)
    for (int64_t c = 0; c < l.in; ++c)
      w[size_t(r * l.in + c)] = load_as_f32(l.w, l.dtype, size_t(r * l.row_stride() + c));
  return w;
}

// ‖X·Eᵀ‖² for E = dequantized(W · s) / s − W: the group's output error on the recorded rows.
double output_error(const std::vector<float>& x, int64_t n, const std::vector<float>& w, int64_t out, int64_t in,
                    const IntQuantSpec& q, const std::vector<float>& s) {
  const int64_t spr = int_scales_per_row(q, in);
  std::vector<uint8_t> codes(size_t(out * int_code_bytes_per_row(q, in)));
  std::vector<float> scales(size_t(out * spr));
  std::vector<uint8_t> zeros(scales.size());
  quantize_int(w.data(), DType::F32, out, in, in, q, s.data(), codes.data(), scales.data(), zeros.data());
  std::vector<double> part(size_t(num_threads()), 0.0);
  parallel_for(out, [&](int64_t r0, int64_t r1, int t) {
    std::vector<float> e(static_cast<size_t>(in));
    double acc = 0;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < in; ++c)
        e[size_t(c)] = int_weight(codes.data(), scales.data(), zeros.data(), q, in, r, c) / s[size_t(c)] -
                       w[size_t(r * in + c)];
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x.data() + i * in;
        double y = 0;
        for (int64_t c = 0; c < in; ++c) y += double(xi[c]) * e[size_t(c)];
        acc += y * y;
      }
    }
    part[size_t(t)] += acc;
  });
  double sum = 0;
  for (double p : part) sum += p;
  return sum;
}

// The best s = mean|x|^α for the projections `ls` sharing the input rows x ([n, in]).
std::vector<float> search_group(const std::vector<float>& x, int64_t n, std::span<const Linear* const> ls,
                                const IntQuantSpec& q) {
  const int64_t in = ls[0]->in;
  std::vector<double> mean(size_t(in), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < in; ++c) mean[size_t(c)] += std::fabs(x[size_t(i * in + c)]);
  for (double& m : mean) m = std::max(m / double(n), 1e-8);
  std::vector<std::vector<float>> ws;
  for (const Linear* l : ls) ws.push_back(to_f32(*l));
  std::vector<float> best(size_t(in), 1.0f), s(static_cast<size_t>(in));
  double best_err = std::numeric_limits<double>::infinity();
  for (int a = 0; a < 20; ++a) {
    const double alpha = a / 20.0;
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (int64_t c = 0; c < in; ++c) {
      s[size_t(c)] = float(std::pow(mean[size_t(c)], alpha));
      lo = std::min(lo, double(s[size_t(c)]));
      hi = std::max(hi, double(s[size_t(c)]));
    }
    const float norm = float(std::sqrt(lo * hi));
    for (float& v : s) v = std::max(v / norm, 1e-4f);
    double err = 0;
    for (size_t i = 0; i < ls.size(); ++i) err += output_error(x, n, ws[i], ls[i]->out, in, q, s);
    if (err < best_err) best_err = err, best = s;
  }
  return best;
}

}  // namespace

std::vector<AwqLayerScales> awq_search(const ModelConfig& cfg, ModelWeights w, std::span<const int32_t> tokens,
                                       const IntQuantSpec& q) {
  if (cfg.num_experts > 0) throw Error("--awq supports dense models (this one has experts)");
  // A fused checkpoint tensor (Phi-3's qkv_proj) binds as views sharing one name.
  for (const LayerWeights& L : w.layers)
    if (L.q.name == L.k.name || L.gate.name == L.up.name)
      throw Error("--awq does not support fused projections ('" + L.q.name + "', '" + L.gate.name + "')");
  if (tokens.size() < 16) throw Error("--awq needs at least 16 calibration tokens (got " + std::to_string(tokens.size()) + ")");
  const ModelWeights mw = w;  // views of the same storage (w.storage is shared)
  const CalibrationRecord rec = record_calibration(cfg, std::move(w), tokens);
  const int64_t n = rec.rows;
  std::vector<AwqLayerScales> out(mw.layers.size());
  auto rows = [&](const Linear& l) -> const std::vector<float>& {
    auto it = rec.inputs.find(l.name);
    GALE_ASSERT(it != rec.inputs.end() && int64_t(it->second.size()) == n * l.in);
    return it->second;
  };
  for (size_t i = 0; i < mw.layers.size(); ++i) {
    const LayerWeights& L = mw.layers[i];
    const Linear* qkv[] = {&L.q, &L.k, &L.v};
    const Linear* gu[] = {&L.gate, &L.up};
    const Linear* o[] = {&L.o};
    const Linear* down[] = {&L.down};
    out[i].qkv = search_group(rows(L.q), n, qkv, q);
    if (cfg.num_heads == cfg.num_kv_heads) out[i].o = search_group(rows(L.o), n, o, q);
    out[i].gate_up = search_group(rows(L.gate), n, gu, q);
    out[i].down = search_group(rows(L.down), n, down, q);
  }
  return out;
}

}  // namespace gale
