// The cross-backend op harness (llama.cpp's test-backend-ops habit): every op of the Backend
// interface (model/backend.h) runs on every backend this build and machine have — the CPU with
// f32 activations, the CPU with --dtype bf16 (bf16 KV cache, activations rounded between ops),
// and the CUDA backend when the build has it and a GPU is visible (else its cases skip, saying
// why) — over awkward sizes, and is compared with the scalar references of kernels/ref under the
// op's tolerance from kTolerance below. A new op gets: a reference in kernels/ref, a row in
// kTolerance, and a TEST_P here that runs it through the Backend on every target.
//
// The comparison is the largest normalized squared error of one row: max over rows r of
// sum_i (got - want)² / sum_i want², so an error confined to one token (the one at a block
// boundary, the first outside a window) is not averaged away by the rows that are right.
// Sampling and routing are compared exactly (kept sets, picks, chosen experts).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ref/activation_ref.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/matmul_ref.h"
#include "kernels/ref/moe_ref.h"
#include "kernels/ref/norm_ref.h"
#include "kernels/ref/rope_ref.h"
#include "kernels/ref/sampling_ref.h"
#include "model/backend.h"
#include "model/backend_factory.h"
#include "model/rope.h"
#include "host_sampling_backend.h"
#include "runtime/sampler.h"

#ifdef GALE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace gale {
namespace {

// ---- tolerances ------------------------------------------------------------------------------

// Largest row NMSE allowed per op. "f32": the CPU with f32 activations, against references
// that sum in double: only f32 rounding (about 2^-24 relative per operation, so a row's NMSE
// near 1e-14) and the f32 sums of long dot products separate them. "bf16": the CPU with
// --dtype bf16 and the CUDA backend, whose activations (and KV cache) are bf16: one rounding to
// bf16 is up to 2^-9 relative (NMSE of a row up to 4e-6, about 1.3e-6 on average), and an op
// may round several times (inputs are given already bf16, so they cost nothing). Each bug the
// harness was checked against (see the commit that added it) gives row errors of 1e-3 or more.
struct Tolerance {
  const char* op;
  double f32, bf16;
};
constexpr Tolerance kTolerance[] = {
    // one sum of squares, one product per value; bf16: the output rounded once
    {"rmsnorm", 1e-12, 1e-5},
    {"head_rmsnorm", 1e-12, 1e-5},
    // two products and a sum per value; bf16: rounded once (q and k in place)
    {"rope", 1e-12, 1e-5},
    // the cache holds what was written: the rotated k (bf16: rounded once, as the reference)
    {"kv_write", 1e-12, 1e-5},
    // f32 softmax and sums over up to ~700 positions; bf16: rotated q rounded, the softmax
    // weights rounded before the PV product on the GPU, the output rounded: three roundings
    {"attention", 1e-11, 4e-5},
    // An E4M3 cache (--kv-cache-dtype fp8): backend and reference store the same bytes (the same
    // f32 division, round to nearest even), except where their rotated k differ in the last
    // bit next to a rounding tie, which moves one element by one E4M3 step (2^-3 relative):
    // NMSE <= (2^-3)^2 / (row / 3) < 1e-3 for rows of 64 or more. A wrong scale or slot is >= 0.2.
    {"kv_write_fp8", 1e-3, 1e-3},
    // Both read those bytes: the attention's own error, plus what one such element moves
    {"attention_fp8", 1e-6, 1e-4},
    // f32 exp; bf16: output rounded once
    {"silu_mul", 1e-12, 1e-5},
    // f32 dot products of up to 200 terms against double sums; bf16: output rounded once (the
    // weights are bf16 on every backend, so they cost nothing)
    {"linear", 1e-11, 1e-5},
    // SiLU-mul rounded to the activation dtype, then a product: two roundings
    {"swiglu_linear", 1e-11, 3e-5},
    // per expert gate|up, SiLU-mul and down products, each output bf16 on the GPU: four
    // roundings, then the weighted sum into the f32 residual
    {"moe_experts", 1e-11, 6e-5},
};

double tolerance(const std::string& op, bool bf16) {
  for (const Tolerance& t : kTolerance)
    if (op == t.op) return bf16 ? t.bf16 : t.f32;
  ADD_FAILURE() << "no tolerance for " << op;
  return 0.0;
}

// Row r of got/want: rows x cols, dense. Returns the largest row NMSE and its row.
std::pair<double, int64_t> max_row_nmse(const std::vector<float>& got, const std::vector<float>& want, int64_t rows,
                                        int64_t cols) {
  double worst = 0.0;
  int64_t at = -1;
  for (int64_t r = 0; r < rows; ++r) {
    double err = 0.0, norm = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      const double g = got[size_t(r * cols + i)], w = want[size_t(r * cols + i)];
      err += (g - w) * (g - w);
      norm += w * w;
    }
    // A row that should be zero must be zero (a write into the wrong cache slot).
    const double e = norm > 0.0 ? err / norm : (err > 0.0 ? 1.0 : 0.0);
    if (!(e <= worst)) {  // NaN counts as the worst
      worst = std::isnan(e) ? INFINITY : e;
      at = r;
    }
  }
  return {worst, at};
}

// ---- the targets -----------------------------------------------------------------------------

enum class Target { CpuF32, CpuBf16, Cuda };

std::string target_name(Target t) {
  return t == Target::CpuF32 ? "cpu_f32" : t == Target::CpuBf16 ? "cpu_bf16" : "cuda";
}

std::unique_ptr<Backend> make_target(Target t) {
  BackendOptions o;
  o.device = t == Target::Cuda ? "cuda" : "cpu";
  o.bf16_activations = t == Target::CpuBf16;
  o.gpu_memory_utilization = 0.5;
  return make_backend(o);
}

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// ---- a one-layer model whose weights and norms the ops read --------------------------------

struct Shape {
  int64_t hidden = 8, inter = 8, heads = 1, kv_heads = 1, head_dim = 8, vocab = 16;
  int64_t experts = 0, top_k = 0;
  bool norm_topk_prob = true;
  int64_t window = 0;
  double partial_rotary = 1.0;
  bool o_bias = false;
  RopeConfig rope;
};

struct TinyModel {
  ModelConfig cfg;
  ModelWeights w;
  std::deque<std::vector<uint16_t>> storage;  // bf16 matrices (stable addresses)
  std::mt19937 rng;

  explicit TinyModel(const Shape& s, uint64_t seed) : rng(uint32_t(seed)) {
    ModelConfig& c = cfg;
    c.architecture = "test";
    c.vocab_size = s.vocab;
    c.hidden_size = s.hidden;
    c.intermediate_size = s.inter;
    c.num_layers = 1;
    c.num_heads = s.heads;
    c.num_kv_heads = s.kv_heads;
    c.head_dim = s.head_dim;
    c.max_position_embeddings = 1 << 16;
    c.layer_window = {s.window};
    c.sliding_window = s.window;
    c.num_experts = s.experts;
    c.num_experts_per_tok = s.top_k;
    c.norm_topk_prob = s.norm_topk_prob;
    c.o_bias = s.o_bias;
    c.qk_norm = true;
    c.rope = s.rope;
    c.rope.partial_rotary_factor = s.partial_rotary;
    const int64_t qd = s.heads * s.head_dim, kvd = s.kv_heads * s.head_dim;
    w.layers.resize(1);
    LayerWeights& L = w.layers[0];
    L.attn_norm = norm(s.hidden);
    L.ffn_norm = norm(s.hidden);
    L.q_norm = norm(s.head_dim);
    L.k_norm = norm(s.head_dim);
    L.q = matrix(qd, s.hidden);
    L.k = matrix(kvd, s.hidden);
    L.v = matrix(kvd, s.hidden);
    L.o = matrix(s.hidden, qd);
    if (s.o_bias) L.o.bias = norm(s.hidden);
    if (s.experts > 0) {
      L.router = matrix(s.experts, s.hidden);
      for (int64_t e = 0; e < s.experts; ++e)
        L.experts.push_back({matrix(s.inter, s.hidden), matrix(s.inter, s.hidden), matrix(s.hidden, s.inter)});
    } else {
      L.gate = matrix(s.inter, s.hidden);
      L.up = matrix(s.inter, s.hidden);
      L.down = matrix(s.hidden, s.inter);
    }
    w.final_norm = norm(s.hidden);
    Linear emb = matrix(s.vocab, s.hidden);
    w.embed = emb.w;
    w.embed_dtype = DType::BF16;
    w.lm_head = emb;
  }

  // Random bf16 [out, in], entries of size 1/sqrt(in) so that products stay near 1.
  Linear matrix(int64_t out, int64_t in) {
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<uint16_t>& m = storage.emplace_back(size_t(out * in));
    const float s = 1.0f / std::sqrt(float(in));
    for (auto& x : m) x = f32_to_bf16(d(rng) * s * 1.7f);
    Linear l;
    l.w = m.data();
    l.dtype = DType::BF16;
    l.out = out;
    l.in = in;
    return l;
  }
  std::vector<float> norm(int64_t n) {
    std::uniform_real_distribution<float> d(0.5f, 1.5f);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng);
    return v;
  }
};

// One backend with one model prepared (a backend keeps its device copies keyed by the host
// weights' addresses, so each model gets a fresh one) and the device buffers of a case.
class Rig {
 public:
  Rig(Target t, const Shape& s, uint64_t seed = 1) : target(t), model(s, seed), be(make_target(t)) {
    be->prepare(model.cfg, model.w);
  }
  ~Rig() {
    for (auto [p, n] : bufs_) be->release(p, n);
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  // Whether activations are narrower than f32 on this target (the bf16 tolerance applies, and
  // inputs are made bf16-representable so the reference reads the same values).
  bool narrow() const { return target != Target::CpuF32; }
  double tol(const std::string& op) const { return tolerance(op, narrow()); }

  void* raw(size_t bytes) {
    void* p = be->alloc(std::max<size_t>(bytes, 16));
    bufs_.push_back({p, std::max<size_t>(bytes, 16)});
    return p;
  }
  // rows x cols of dtype with row stride ld (0: cols).
  Act act(int64_t rows, int64_t cols, DType dt, int64_t ld = 0) {
    if (ld == 0) ld = cols;
    return {raw(size_t(std::max<int64_t>(rows, 1) * ld) * dtype_size(dt)), dt, rows, cols, ld};
  }

  void put(void* dst, const void* src, size_t bytes) {
    if (be->is_cpu()) return void(std::memcpy(dst, src, bytes));
#ifdef GALE_HAVE_CUDA
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), cudaSuccess);
    // A copy from pageable memory may return before it lands, and the backend's stream does
    // not wait for the default one.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
  }
  void get(void* dst, const void* src, size_t bytes) {
    if (be->is_cpu()) return void(std::memcpy(dst, src, bytes));
#ifdef GALE_HAVE_CUDA
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the backend's stream is not the default one
    ASSERT_EQ(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), cudaSuccess);
#endif
  }

  // dense [rows, cols] f32 host values into a (converted to its dtype; its padding untouched).
  void upload(Act a, const std::vector<float>& v) {
    if (a.rows == 0) return;
    const size_t es = dtype_size(a.dtype), span = size_t((a.rows - 1) * a.ld + a.cols) * es;
    std::vector<uint8_t> img(span);
    get(img.data(), a.data, span);
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t i = 0; i < a.cols; ++i) {
        const float x = v[size_t(r * a.cols + i)];
        const size_t at = size_t(r * a.ld + i);
        if (a.dtype == DType::BF16) reinterpret_cast<uint16_t*>(img.data())[at] = f32_to_bf16(x);
        else reinterpret_cast<float*>(img.data())[at] = x;
      }
    put(a.data, img.data(), span);
  }
  std::vector<float> download(Act a) {
    std::vector<float> v(size_t(a.rows * a.cols));
    if (a.rows == 0) return v;
    const size_t es = dtype_size(a.dtype), span = size_t((a.rows - 1) * a.ld + a.cols) * es;
    std::vector<uint8_t> img(span);
    get(img.data(), a.data, span);
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t i = 0; i < a.cols; ++i) v[size_t(r * a.cols + i)] = load_as_f32(img.data(), a.dtype, size_t(r * a.ld + i));
    return v;
  }

  // Random activations, bf16-representable on narrow targets.
  std::vector<float> random(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = narrow() ? round_bf16(d(model.rng)) : d(model.rng);
    return v;
  }

  void expect_close(const std::string& op, const std::vector<float>& got, const std::vector<float>& want, int64_t rows,
                    int64_t cols, const std::string& what) {
    auto [err, row] = max_row_nmse(got, want, rows, cols);
    if (std::getenv("GALE_BACKEND_OPS_VERBOSE"))  // each case's error against its tolerance
      std::printf("%-9s %-14s %.2e / %.0e  %s\n", target_name(target).c_str(), op.c_str(), err, tol(op), what.c_str());
    EXPECT_LE(err, tol(op)) << target_name(target) << " " << op << " " << what << ": row " << row << " of " << rows
                            << " has NMSE " << err;
  }

  Target target;
  TinyModel model;
  std::unique_ptr<Backend> be;

 private:
  std::vector<std::pair<void*, size_t>> bufs_;
};

// ---- step plans (as Transformer::build_plan makes them) ------------------------------------

struct SeqSpec {
  int64_t start, n;
};

struct Step {
  StepPlan plan;
  std::vector<std::vector<int32_t>> tables;
  int64_t num_blocks = 0;
};

// Each sequence gets its blocks from one shuffled pool (no table is the identity, blocks of
// different sequences interleave); rotary tables per sequence from model/rope.h.
std::unique_ptr<Step> make_step(const ModelConfig& c, const std::vector<SeqSpec>& seqs, int64_t block_size,
                                std::mt19937& rng) {
  auto s = std::make_unique<Step>();
  for (const SeqSpec& q : seqs) s->num_blocks += (q.start + q.n + block_size - 1) / block_size;
  s->num_blocks += 1;  // one never used: it must stay untouched
  std::vector<int32_t> pool(size_t(s->num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  size_t next = 0;
  StepPlan& p = s->plan;
  p.rot_dim = int64_t(double(c.head_dim) * c.rope.partial_rotary_factor);
  p.block_size = block_size;
  const int64_t half = p.rot_dim / 2;
  for (const SeqSpec& q : seqs) {
    std::vector<int32_t>& t = s->tables.emplace_back();
    for (int64_t b = 0; b < (q.start + q.n + block_size - 1) / block_size; ++b) t.push_back(pool[next++]);
  }
  int64_t t0 = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqSpec& q = seqs[i];
    p.seqs.push_back({t0, q.n, q.start, s->tables[i]});
    std::vector<int64_t> pos(size_t(q.n));
    std::iota(pos.begin(), pos.end(), q.start);
    p.cos.resize(size_t((t0 + q.n) * half));
    p.sin.resize(size_t((t0 + q.n) * half));
    RopeFrequencies f = rope_frequencies(c.rope, p.rot_dim, q.start + q.n);
    rope_cos_sin(f, pos.data(), q.n, p.cos.data() + t0 * half, p.sin.data() + t0 * half);
    for (int64_t j = 0; j < q.n; ++j) {
      p.tokens.push_back(0);
      p.logit_rows.push_back(int32_t(t0 + j));
    }
    t0 += q.n;
  }
  p.padded_T = p.T();
  return s;
}

class BackendOps : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    if (GetParam() != Target::Cuda) return;
    try {
      make_target(Target::Cuda);
    } catch (const Error& e) {
      GTEST_SKIP() << "no CUDA backend here: " << e.what();
    }
  }
};

// ---- RMSNorm ---------------------------------------------------------------------------------

TEST_P(BackendOps, RmsNorm) {
  for (int64_t d : {1, 3, 67, 257, 1024}) {
    Shape s;
    s.hidden = d;
    Rig rig(GetParam(), s, uint64_t(d));
    Backend& be = *rig.be;
    const std::vector<float>& w = rig.model.w.layers[0].attn_norm;
    for (int64_t n : {1, 5, 33}) {
      // The residual stream is f32 on every backend; the normed rows are activations. Strided
      // input (ld d + 3) on every size; the aligned ld on the large one, which the GPU
      // vectorizes.
      for (int64_t pad : {int64_t(3), int64_t(0)}) {
        Act in = rig.act(n, d, DType::F32, d + pad), out = rig.act(n, d, be.act_dtype());
        std::vector<float> x = rig.random(size_t(n * d), -3.0f, 3.0f);
        rig.upload(in, x);
        be.rmsnorm(in, w, 1e-5f, out);
        std::vector<float> want(x.size());
        ref::rmsnorm(x.data(), d, n, d, w.data(), 1e-5f, want.data(), d);
        rig.expect_close("rmsnorm", rig.download(out), want, n, d, "d=" + std::to_string(d) + " n=" + std::to_string(n));
      }
    }
  }
}

TEST_P(BackendOps, HeadRmsNorm) {
  for (int64_t hd : {64, 128})
    for (int64_t heads : {1, 3, 5}) {
      Shape s;
      s.head_dim = hd;
      s.heads = heads;
      Rig rig(GetParam(), s, uint64_t(hd + heads));
      Backend& be = *rig.be;
      const std::vector<float>& w = rig.model.w.layers[0].q_norm;
      for (int64_t n : {1, 7}) {
        // In place on q inside a fused q|k|v row (row stride past the heads).
        const int64_t cols = heads * hd, ld = cols + 2 * hd;
        Act x = rig.act(n, ld, be.act_dtype()).cols_range(0, cols);
        std::vector<float> v = rig.random(size_t(n * cols), -4.0f, 4.0f);
        rig.upload(x, v);
        be.head_rmsnorm(x, heads, w, 1e-6f);
        ref::head_rmsnorm(v.data(), cols, n, heads, hd, w.data(), 1e-6f);
        rig.expect_close("head_rmsnorm", rig.download(x), v, n * heads, hd,
                         "head_dim=" + std::to_string(hd) + " heads=" + std::to_string(heads));
      }
    }
}

// ---- RoPE ------------------------------------------------------------------------------------

ref::RopeSpec ref_spec(const RopeConfig& r) {
  ref::RopeSpec s;
  switch (r.type) {
    case RopeType::Default: s.type = ref::RopeScaling::Default; break;
    case RopeType::Linear: s.type = ref::RopeScaling::Linear; break;
    case RopeType::Dynamic: s.type = ref::RopeScaling::Dynamic; break;
    case RopeType::Llama3: s.type = ref::RopeScaling::Llama3; break;
    case RopeType::Yarn: s.type = ref::RopeScaling::Yarn; break;
  }
  s.theta = r.theta;
  s.factor = r.factor;
  s.original_max_position = r.original_max_position;
  s.low_freq_factor = r.low_freq_factor;
  s.high_freq_factor = r.high_freq_factor;
  s.beta_fast = r.beta_fast;
  s.beta_slow = r.beta_slow;
  s.mscale = r.mscale;
  s.mscale_all_dim = r.mscale_all_dim;
  s.has_attention_factor = r.attention_factor.has_value();
  s.attention_factor = r.attention_factor.value_or(1.0);
  s.truncate = r.truncate;
  return s;
}

// Every scaling type of model/rope.cpp against the reference's formulas (host only: every
// backend rotates with the tables rope.cpp makes).
std::vector<RopeConfig> rope_configs() {
  std::vector<RopeConfig> v;
  RopeConfig r;
  r.theta = 10000.0;
  v.push_back(r);  // default
  r.type = RopeType::Linear;
  r.factor = 4.0;
  v.push_back(r);
  r.type = RopeType::Dynamic;
  r.factor = 2.0;
  r.original_max_position = 2048;
  v.push_back(r);
  r = RopeConfig{};
  r.type = RopeType::Llama3;  // Llama 3.1's values
  r.theta = 500000.0;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position = 8192;
  v.push_back(r);
  r = RopeConfig{};
  r.type = RopeType::Yarn;  // Qwen-style: attention factor from the factor
  r.theta = 1000000.0;
  r.factor = 4.0;
  r.original_max_position = 32768;
  v.push_back(r);
  r.mscale = 1.0;  // DeepSeek-style mscale / mscale_all_dim, no truncation
  r.mscale_all_dim = 0.707;
  r.truncate = false;
  r.beta_fast = 16.0;
  r.beta_slow = 2.0;
  v.push_back(r);
  r.attention_factor = 1.25;  // explicit
  v.push_back(r);
  return v;
}

TEST(BackendOpsRope, FrequencyTablesOfEveryScalingType) {
  for (const RopeConfig& r : rope_configs())
    for (int64_t dim : {32, 64, 96, 128})  // 32, 96: partial rotary of 64 / 128
      for (int64_t seq_len : {int64_t(1), int64_t(1000), int64_t(5000), int64_t(70000)}) {
        const std::string what = std::string(rope_type_name(r.type)) + " dim=" + std::to_string(dim) +
                                 " seq_len=" + std::to_string(seq_len);
        RopeFrequencies got = rope_frequencies(r, dim, seq_len);
        ref::RopeTable want = ref::rope_table(ref_spec(r), dim, seq_len);
        ASSERT_EQ(got.inv_freq.size(), want.inv_freq.size()) << what;
        // rope.cpp computes base^(2i/dim) in f32 as transformers does: the exponent's rounding
        // costs ln(base) * 2^-24 relative (about 1e-6 for base 1e6).
        for (size_t i = 0; i < want.inv_freq.size(); ++i)
          ASSERT_NEAR(got.inv_freq[i], want.inv_freq[i], 2e-6 * want.inv_freq[i]) << what << " i=" << i;
        ASSERT_NEAR(got.attention_scaling, want.attention_scaling, 1e-6) << what;
        const int64_t half = dim / 2;
        const std::vector<int64_t> pos = {0, 1, 17, seq_len - 1, 4095};
        std::vector<float> gc(pos.size() * size_t(half)), gs(gc.size()), wc(gc.size()), ws(gc.size());
        rope_cos_sin(got, pos.data(), int64_t(pos.size()), gc.data(), gs.data());
        ref::rope_cos_sin(want, pos.data(), int64_t(pos.size()), wc.data(), ws.data());
        for (size_t j = 0; j < pos.size(); ++j)
          for (int64_t i = 0; i < half; ++i) {
            // f32 angle (as transformers): off by the frequency's error plus one rounding.
            const double angle = double(pos[j]) * want.inv_freq[size_t(i)];
            const double tol = want.attention_scaling * (3e-6 * angle) + 1e-6;
            const size_t at = j * size_t(half) + size_t(i);
            ASSERT_NEAR(gc[at], wc[at], tol) << what << " pos=" << pos[j] << " i=" << i;
            ASSERT_NEAR(gs[at], ws[at], tol) << what << " pos=" << pos[j] << " i=" << i;
          }
      }
}

// The rotation on q and k inside one q|k|v buffer, full and partial rotary, odd head counts,
// sequences at different positions.
TEST_P(BackendOps, Rope) {
  struct Case {
    int64_t hd, heads, kv_heads;
    double partial;
    RopeType type;
  };
  for (const Case& c : {Case{64, 3, 1, 1.0, RopeType::Default}, Case{128, 5, 5, 1.0, RopeType::Yarn},
                        Case{128, 4, 2, 0.5, RopeType::Llama3}, Case{64, 7, 7, 0.25, RopeType::Default}}) {
    Shape s;
    s.head_dim = c.hd;
    s.heads = c.heads;
    s.kv_heads = c.kv_heads;
    s.partial_rotary = c.partial;
    for (const RopeConfig& r : rope_configs())
      if (r.type == c.type) s.rope = r;
    Rig rig(GetParam(), s, uint64_t(c.hd * c.heads));
    Backend& be = *rig.be;
    auto step = make_step(rig.model.cfg, {{0, 1}, {40, 1}, {0, 19}, {3000, 6}}, 16, rig.model.rng);
    const StepPlan& p = step->plan;
    const int64_t T = p.T(), qd = c.heads * c.hd, kvd = c.kv_heads * c.hd, ld = qd + 2 * kvd;
    Act qkv = rig.act(T, ld, be.act_dtype());
    std::vector<float> x = rig.random(size_t(T * ld), -2.0f, 2.0f);
    rig.upload(qkv, x);
    be.begin_step(p);
    be.rope(qkv.cols_range(0, qd), c.heads, qkv.cols_range(qd, kvd), c.kv_heads, c.hd);
    ref::rope_rotate(x.data(), ld, T, c.heads, c.hd, p.rot_dim, p.cos.data(), p.sin.data());
    ref::rope_rotate(x.data() + qd, ld, T, c.kv_heads, c.hd, p.rot_dim, p.cos.data(), p.sin.data());
    // v is untouched: compare the whole rows.
    rig.expect_close("rope", rig.download(qkv), x, T, ld,
                     std::string(rope_type_name(c.type)) + " head_dim=" + std::to_string(c.hd) +
                         " rot_dim=" + std::to_string(p.rot_dim) + " heads=" + std::to_string(c.heads));
  }
}

// ---- paged attention -------------------------------------------------------------------------

struct AttnCase {
  int64_t heads, kv_heads, hd, window;
  std::vector<SeqSpec> seqs;
  bool rope;
  bool fp8 = false;  // an E4M3 cache with per-layer scales instead of the backend's kv_dtype()
};

void run_attention(Target target, const AttnCase& c) {
  Shape s;
  s.heads = c.heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.hd;
  s.window = c.window;
  Rig rig(target, s, uint64_t(c.heads * 131 + c.hd + c.window));
  Backend& be = *rig.be;
  const int64_t bs = 16;
  auto step = make_step(rig.model.cfg, c.seqs, bs, rig.model.rng);
  const StepPlan& p = step->plan;
  const int64_t T = p.T(), qd = c.heads * c.hd, kvd = c.kv_heads * c.hd, ld = qd + 2 * kvd;
  std::string what = "heads=" + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                     " head_dim=" + std::to_string(c.hd) + " window=" + std::to_string(c.window) +
                     (c.rope ? " rope_attention" : " attention") + (c.fp8 ? " fp8" : "") + " seqs";
  for (const SeqSpec& q : c.seqs) what += " " + std::to_string(q.start) + "+" + std::to_string(q.n);

  // The cache: earlier steps' K/V of every sequence written by the reference, then uploaded.
  const DType kdt = c.fp8 ? DType::F8_E4M3 : be.kv_dtype();
  ASSERT_TRUE(be.supports_kv(kdt));
  // E4M3: this step's |K| <= 2 (2.83 rotated) and |V| <= 2 land below 320 and 300 of the
  // format's 448; earlier steps' (<= 1) at half that.
  const float k_scale = c.fp8 ? 2.0f / 224.0f : 1.0f, v_scale = c.fp8 ? 2.0f / 300.0f : 1.0f;
  const size_t cache_elems = size_t(step->num_blocks * bs * kvd), cache_bytes = cache_elems * dtype_size(kdt);
  std::vector<uint8_t> kimg(cache_bytes, 0), vimg(cache_bytes, 0);
  const ref::PagedCache hc{kimg.data(), vimg.data(), kdt, bs, c.kv_heads, c.hd, k_scale, v_scale};
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const int64_t n = c.seqs[i].start;
    std::vector<float> k = rig.random(size_t(n * kvd)), v = rig.random(size_t(n * kvd));
    ref::paged_kv_write(k.data(), kvd, v.data(), kvd, n, 0, hc, step->tables[i]);
  }
  KVLayer kv{rig.raw(cache_bytes), rig.raw(cache_bytes), kdt, bs, c.kv_heads, c.hd, k_scale, v_scale};
  rig.put(kv.k, kimg.data(), cache_bytes);
  rig.put(kv.v, vimg.data(), cache_bytes);
  step->plan.kv_base = kv.k;

  Act qkv = rig.act(T, ld, be.act_dtype()), out = rig.act(T, qd, be.act_dtype());
  std::vector<float> x = rig.random(size_t(T * ld), -2.0f, 2.0f);
  rig.upload(qkv, x);
  const float scale = 1.0f / std::sqrt(float(c.hd));
  be.begin_step(p);
  Act q = qkv.cols_range(0, qd), k = qkv.cols_range(qd, kvd), v = qkv.cols_range(qd + kvd, kvd);
  if (c.rope) be.rope_attention(kv, q, k, v, c.heads, c.window, scale, out);
  else be.attention(kv, q, k, v, c.heads, c.window, scale, out);

  if (c.rope) {
    ref::rope_rotate(x.data(), ld, T, c.heads, c.hd, p.rot_dim, p.cos.data(), p.sin.data());
    ref::rope_rotate(x.data() + qd, ld, T, c.kv_heads, c.hd, p.rot_dim, p.cos.data(), p.sin.data());
    if (rig.narrow())  // the rotated q is an activation again (bf16 on the GPU, round_act on the CPU)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < qd; ++i) x[size_t(t * ld + i)] = round_bf16(x[size_t(t * ld + i)]);
    // The GPU rotates k in its bf16 activations and caches that (the CPU caches its f32 k): a
    // bf16 cache rounds the same either way, an E4M3 one must see the bf16 value.
    if (c.fp8 && !be.is_cpu())
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = qd; i < qd + kvd; ++i) x[size_t(t * ld + i)] = round_bf16(x[size_t(t * ld + i)]);
  }
  std::vector<float> want(size_t(T * qd));
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const StepPlan::Seq& sq = p.seqs[i];
    const float* row = x.data() + sq.t0 * ld;
    ref::paged_kv_write(row + qd, ld, row + qd + kvd, ld, sq.n, sq.start_pos, hc, step->tables[i]);
    ref::paged_attention(row, ld, sq.n, c.heads, sq.start_pos, hc, step->tables[i], c.window, scale,
                         want.data() + sq.t0 * qd, qd);
  }
  rig.expect_close(c.fp8 ? "attention_fp8" : "attention", rig.download(out), want, T, qd, what);
  // The whole cache as [slots, kvd] rows: this step's K/V where the tables say, nothing else moved.
  const int64_t slots = step->num_blocks * bs;
  Act kc{kv.k, kdt, slots, kvd, kvd}, vc{kv.v, kdt, slots, kvd, kvd};
  std::vector<float> wk(cache_elems), wv(cache_elems);
  for (size_t i = 0; i < cache_elems; ++i) {
    wk[i] = load_as_f32(kimg.data(), kdt, i);
    wv[i] = load_as_f32(vimg.data(), kdt, i);
  }
  const char* op = c.fp8 ? "kv_write_fp8" : "kv_write";
  rig.expect_close(op, rig.download(kc), wk, slots, kvd, "K " + what);
  rig.expect_close(op, rig.download(vc), wv, slots, kvd, "V " + what);
}

// Steps as the scheduler makes them: one-token decodes first, then prefill chunks. Contexts
// cross block boundaries (block size 16), start inside a block, are a single token, or are long
// enough for the GPU's split-K decode.
const std::vector<SeqSpec> kMixedStep = {{0, 1}, {37, 1}, {700, 1}, {0, 33}, {50, 17}, {5, 1}};
const std::vector<SeqSpec> kDecodeStep = {{15, 1}, {16, 1}, {300, 1}, {1, 1}, {63, 1}};
const std::vector<SeqSpec> kPrefillStep = {{0, 70}};

TEST_P(BackendOps, Attention) {
  for (int64_t window : {0, 20})
    for (bool rope : {false, true}) {
      run_attention(GetParam(), {8, 2, 128, window, kMixedStep, rope});  // GQA 4
      run_attention(GetParam(), {6, 1, 64, window, kDecodeStep, rope});  // MQA, 6 heads
      run_attention(GetParam(), {3, 3, 64, window, kPrefillStep, rope});  // MHA, 3 heads
    }
  run_attention(GetParam(), {4, 2, 64, 1, kMixedStep, true});  // window 1: each token sees itself only
  run_attention(GetParam(), {5, 5, 128, 7, kDecodeStep, true});
}

// The same steps over an E4M3 cache (--kv-cache-dtype fp8): the K/V write quantizes, both
// attention kernels (the GPU's decode and prefill) dequantize with the layer's scales.
TEST_P(BackendOps, AttentionFp8) {
  for (int64_t window : {0, 20})
    for (bool rope : {false, true}) {
      run_attention(GetParam(), {8, 2, 128, window, kMixedStep, rope, true});
      run_attention(GetParam(), {6, 1, 64, window, kDecodeStep, rope, true});
      run_attention(GetParam(), {3, 3, 64, window, kPrefillStep, rope, true});
    }
}

// ---- SiLU-mul and the products ---------------------------------------------------------------

TEST_P(BackendOps, SiluMul) {
  Rig rig(GetParam(), Shape{});
  Backend& be = *rig.be;
  for (int64_t d : {1, 3, 67, 257, 1000, 1024})
    for (int64_t n : {1, 9}) {
      // gate and up side by side in one row, as linear_fused of (gate, up) writes them.
      Act gu = rig.act(n, 2 * d, be.act_dtype());
      std::vector<float> x = rig.random(size_t(n * 2 * d), -6.0f, 6.0f);
      rig.upload(gu, x);
      be.silu_mul(gu.cols_range(0, d), gu.cols_range(d, d));
      std::vector<float> want(size_t(n * d));
      ref::silu_mul(x.data(), 2 * d, x.data() + d, 2 * d, n, d, want.data(), d);
      rig.expect_close("silu_mul", rig.download(gu.cols_range(0, d)), want, n, d,
                       "d=" + std::to_string(d) + " n=" + std::to_string(n));
    }
}

// Rows 1 and 3 take the GPU's GEMV, 17 cuBLASLt.
TEST_P(BackendOps, Linear) {
  struct Case {
    int64_t in, out;
    bool bias;
  };
  for (const Case& c : {Case{64, 72, false}, Case{136, 67, true}, Case{200, 48, true}}) {
    Shape s;
    s.hidden = c.out;
    s.heads = c.in / 8;
    s.head_dim = 8;
    s.o_bias = c.bias;
    Rig rig(GetParam(), s, uint64_t(c.in));
    Backend& be = *rig.be;
    const Linear& o = rig.model.w.layers[0].o;
    for (int64_t n : {1, 3, 17})
      for (bool acc : {false, true}) {
        // Accumulating into the f32 residual (o_proj) or writing an activation.
        Act in = rig.act(n, c.in, be.act_dtype()), out = rig.act(n, c.out, acc ? DType::F32 : be.act_dtype());
        std::vector<float> x = rig.random(size_t(n * c.in)), y(size_t(n * c.out), 0.0f);
        if (acc) {
          y = rig.random(y.size());
          rig.upload(out, y);
        }
        rig.upload(in, x);
        be.linear(o, in, out, acc);
        ref::matmul(x.data(), c.in, n, c.in, o.w, o.dtype, c.out, c.bias ? o.bias.data() : nullptr, y.data(), c.out,
                    acc);
        rig.expect_close("linear", rig.download(out), y, n, c.out,
                         std::to_string(n) + "x" + std::to_string(c.in) + " -> " + std::to_string(c.out) +
                             (acc ? " accumulate" : ""));
      }
  }
}

TEST_P(BackendOps, SwigluLinear) {
  for (auto [hidden, inter] : {std::pair<int64_t, int64_t>{64, 40}, {128, 136}}) {
    Shape s;
    s.hidden = hidden;
    s.inter = inter;
    Rig rig(GetParam(), s, uint64_t(hidden + inter));
    Backend& be = *rig.be;
    const Linear& down = rig.model.w.layers[0].down;
    for (int64_t n : {1, 5, 20})
      for (bool acc : {true, false}) {
        Act gu = rig.act(n, 2 * inter, be.act_dtype()), out = rig.act(n, hidden, acc ? DType::F32 : be.act_dtype());
        std::vector<float> x = rig.random(size_t(n * 2 * inter), -3.0f, 3.0f), y(size_t(n * hidden), 0.0f);
        rig.upload(gu, x);
        if (acc) {
          y = rig.random(y.size());
          rig.upload(out, y);
        }
        be.swiglu_linear(gu, down, out, acc);
        std::vector<float> g(size_t(n * inter));
        ref::silu_mul(x.data(), 2 * inter, x.data() + inter, 2 * inter, n, inter, g.data(), inter);
        if (rig.narrow())  // the activation the down product reads
          for (float& v : g) v = round_bf16(v);
        ref::matmul(g.data(), inter, n, inter, down.w, down.dtype, hidden, nullptr, y.data(), hidden, acc);
        rig.expect_close("swiglu_linear", rig.download(out), y, n, hidden,
                         std::to_string(n) + " rows, hidden " + std::to_string(hidden) + ", intermediate " +
                             std::to_string(inter) + (acc ? " accumulate" : ""));
      }
  }
}

// ---- MoE -------------------------------------------------------------------------------------

TEST_P(BackendOps, MoeExperts) {
  struct Case {
    int64_t hidden, inter, experts, top_k;
    bool norm;
  };
  // 64/32: the GPU's routing and grouped GEMMs; 68/24: hidden not a multiple of 8, the host
  // routing path on every backend.
  for (const Case& c : {Case{64, 32, 8, 2, true}, Case{64, 32, 4, 1, false}, Case{64, 48, 6, 3, false},
                        Case{68, 24, 4, 2, true}}) {
    Shape s;
    s.hidden = c.hidden;
    s.inter = c.inter;
    s.experts = c.experts;
    s.top_k = c.top_k;
    s.norm_topk_prob = c.norm;
    Rig rig(GetParam(), s, uint64_t(c.experts * 10 + c.top_k));
    Backend& be = *rig.be;
    const LayerWeights& L = rig.model.w.layers[0];
    std::vector<ref::ExpertRef> experts;
    for (const ExpertWeights& X : L.experts) experts.push_back({X.gate.w, X.up.w, X.down.w, X.gate.dtype});
    for (int64_t T : {1, 5, 33}) {
      const int64_t H = c.hidden, E = c.experts, K = c.top_k;
      Act xn = rig.act(T, H, be.act_dtype()), router = rig.act(T, E, DType::F32), x = rig.act(T, H, DType::F32);
      std::vector<float> xv = rig.random(size_t(T * H), -2.0f, 2.0f), res = rig.random(size_t(T * H));
      // Router logits: distinct values apart by more than any rounding, except the last row
      // whose logits are all equal (ties go to the lower experts).
      std::vector<float> logits(size_t(T * E));
      for (int64_t t = 0; t < T; ++t) {
        std::vector<int32_t> perm(static_cast<size_t>(E));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rig.model.rng);
        for (int64_t e = 0; e < E; ++e) logits[size_t(t * E + e)] = t == T - 1 && T > 1 ? 0.5f : 0.37f * float(perm[size_t(e)]);
      }
      rig.upload(xn, xv);
      rig.upload(router, logits);
      rig.upload(x, res);
      void* ws = rig.raw(be.moe_workspace_bytes(rig.model.cfg, T));
      StepPlan plan;  // moe_experts reads no plan, but a backend may want a step begun
      plan.tokens.assign(size_t(T), 0);
      plan.padded_T = T;
      plan.block_size = 16;
      plan.rot_dim = rig.model.cfg.head_dim;
      plan.cos.assign(size_t(T * plan.rot_dim / 2), 1.0f);
      plan.sin.assign(size_t(T * plan.rot_dim / 2), 0.0f);
      for (int32_t t = 0; t < T; ++t) plan.logit_rows.push_back(t);
      be.begin_step(plan);
      be.moe_experts(rig.model.cfg, L, xn, router, ws, x);
      std::vector<int32_t> ids(size_t(T * K));
      std::vector<float> w(size_t(T * K));
      ref::moe_route(logits.data(), E, T, E, K, c.norm, ids.data(), w.data());
      if (T > 1) {
        for (int64_t k = 0; k < K; ++k) ASSERT_EQ(ids[size_t((T - 1) * K + k)], k);  // the reference's own tie rule
      }
      ref::moe_combine(xv.data(), H, T, H, c.inter, experts, ids.data(), w.data(), K, res.data(), H);
      rig.expect_close("moe_experts", rig.download(x), res, T, H,
                       std::to_string(T) + " tokens, " + std::to_string(E) + " experts, top " + std::to_string(K) +
                           (c.norm ? " renormalized" : "") + ", hidden " + std::to_string(H));
    }
  }
}

// ---- argmax and sampling ---------------------------------------------------------------------

TEST_P(BackendOps, ArgmaxRows) {
  Rig rig(GetParam(), Shape{});
  Backend& be = *rig.be;
  for (int64_t V : {1, 7, 1000, 32003}) {
    const int64_t R = 5;
    Act logits = rig.act(R, V, DType::F32);
    std::vector<float> l(size_t(R * V));
    std::uniform_real_distribution<float> d(-10.0f, 10.0f);
    for (auto& x : l) x = d(rig.model.rng);
    // Row 1: its maximum twice (the first wins); row 2: at the last id; row 3: all equal.
    if (V > 3) {
      l[size_t(V + 2)] = l[size_t(V + V - 1)] = 20.0f;
      l[size_t(3 * V - 1)] = 30.0f;
    }
    std::fill(l.begin() + 3 * V, l.begin() + 4 * V, -1.5f);
    rig.upload(logits, l);
    std::vector<int32_t> got(static_cast<size_t>(R));
    be.argmax_rows(logits, got.data());
    for (int64_t r = 0; r < R; ++r)
      EXPECT_EQ(got[size_t(r)], ref::argmax(l.data() + r * V, V)) << target_name(GetParam()) << " V=" << V << " row " << r;
  }
}

// Every row's token against the reference's kept set: the GPU draws in id order, the host
// Sampler (the CPU backend's engine path) in sampling order; the pick must be the token whose
// interval holds u in that order (1e-9 of slack at the interval ends: the GPU's masses are
// 2^-40 fixed point).
TEST_P(BackendOps, SampleRows) {
  Rig rig(GetParam(), Shape{});
  Backend& be = *rig.be;
  struct Params {
    RowSampling r;
    const char* what;
  };
  auto spec = [](float t, int32_t k, float p, float m, float rep = 1.0f, float pres = 0.0f, float freq = 0.0f) {
    return RowSampling{t, k, p, m, rep, pres, freq, 0.0, {}, {}, {}};
  };
  // Greedy rows are decided by the penalty they test: the top token A (an output id seen twice)
  // leads the second by 0.75, which presence 0.5 alone does not overturn and presence + 2 x
  // frequency 0.25 does; a repetition penalty of 1.6 on A's logit (about 15) does too.
  const std::vector<Params> params = {
      {spec(0.0f, 0, 1.0f, 0.0f, 1.0f, 0.5f, 0.25f), "greedy, presence + frequency"},
      {spec(0.0f, 0, 1.0f, 0.0f, 1.6f), "greedy, repetition"},
      {spec(1.0f, 0, 1.0f, 0.0f), "plain"},
      {spec(0.7f, 3, 1.0f, 0.0f), "top_k 3 (cut inside a tie)"},
      {spec(1.0f, 1, 1.0f, 0.0f), "top_k 1"},
      {spec(1.3f, 100000, 1.0f, 0.0f), "top_k past the vocabulary"},
      {spec(0.9f, 0, 0.8f, 0.0f), "top_p 0.8"},
      {spec(1.0f, 0, 1.0f, 0.2f), "min_p 0.2"},
      {spec(0.8f, 40, 0.9f, 0.05f, 1.2f, 0.3f, 0.1f), "everything"},
  };
  // 0.999999 picks the last kept token: a kept set one token too long or short changes it.
  const std::vector<double> us = {0.0, 0.1, 0.37, 0.5, 0.9, 0.999999};
  // Most of the mass on a few scattered ids with chosen probabilities (so that every filter
  // cuts at a known place: min_p 0.2 keeps down to 0.07, top_p 0.8 five tokens; a tie at
  // 0.12), the rest of the vocabulary random far below.
  const std::vector<double> designed = {0.36, 0.17, 0.12, 0.12, 0.07, 0.05, 0.04, 0.03, 0.02, 0.01, 0.01};
  for (int64_t V : {7, 1000, 32003}) {
    std::uniform_real_distribution<float> d(-4.0f, 4.0f);
    std::vector<float> base(static_cast<size_t>(V));
    for (auto& x : base) x = d(rig.model.rng);
    std::vector<int32_t> ids(static_cast<size_t>(V));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rig.model.rng);
    ids.resize(std::min(designed.size(), size_t(V)));
    if (ids.size() > 3 && ids[2] < ids[3]) std::swap(ids[2], ids[3]);  // the tie's first is the higher id
    for (size_t i = 0; i < ids.size(); ++i) base[size_t(ids[i])] = 16.0f + float(std::log(designed[i]));
    const int32_t a = ids[0], b = ids[5];
    std::vector<int32_t> seen = {0, a, b, int32_t(V - 1)};
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    seen.push_back(int32_t(V + 5));  // outside the vocabulary: skipped
    const std::vector<int32_t> out_ids = {std::min(a, b), std::max(a, b)};
    const std::vector<int32_t> out_counts = {a < b ? 2 : 1, a < b ? 1 : 2};
    std::vector<RowSampling> rows;
    std::vector<const Params*> row_params;
    for (const Params& p : params)
      for (double u : us) {
        RowSampling r = p.r;
        r.u = u;
        r.seen_ids = seen;
        r.output_ids = out_ids;
        r.output_counts = out_counts;
        rows.push_back(r);
        row_params.push_back(&p);
      }
    const int64_t R = int64_t(rows.size());
    std::vector<float> l;
    for (int64_t r = 0; r < R; ++r) l.insert(l.end(), base.begin(), base.end());
    Act logits = rig.act(R, V, DType::F32);
    rig.upload(logits, l);
    std::vector<int32_t> got(static_cast<size_t>(R));
    if (be.has_sample_rows()) {
      be.sample_rows(logits, rows, got.data());
    } else {  // the engine's host path for this backend: Sampler::sample's code on its logits
      std::vector<float> host(size_t(R * V));
      be.to_host(logits, host.data());
      std::vector<int32_t> idx;
      for (int64_t r = 0; r < R; ++r) {
        const RowSampling& q = rows[size_t(r)];
        got[size_t(r)] = sample_token(test::sampling_params(q), q.seen_ids, q.output_ids, q.output_counts, q.u,
                                      std::span<float>(host.data() + r * V, size_t(V)), idx);
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const RowSampling& q = rows[size_t(r)];
      const ref::SamplingSpec s{q.temperature, q.top_k, q.top_p, q.min_p, q.repetition_penalty, q.presence_penalty,
                                q.frequency_penalty};
      const double u = rows[size_t(r)].u;
      const std::string what = target_name(GetParam()) + " V=" + std::to_string(V) + " " + row_params[size_t(r)]->what +
                               " u=" + std::to_string(u);
      std::vector<float> pen = base;
      ref::apply_penalties(pen.data(), V, s, seen, out_ids, out_counts);
      if (s.temperature == 0.0f) {
        EXPECT_EQ(got[size_t(r)], ref::argmax(pen.data(), V)) << what;
        continue;
      }
      const std::vector<ref::KeptToken> kept = ref::sampling_filter(pen.data(), V, s);
      const std::vector<ref::KeptToken> order = be.has_sample_rows() ? ref::by_id(kept) : kept;
      const ref::Pick want = ref::pick(order, u);
      if (got[size_t(r)] == want.id) continue;
      // Not the expected token: only acceptable when u sits on the boundary of its interval.
      const auto it = std::find_if(order.begin(), order.end(), [&](const ref::KeptToken& k) { return k.id == got[size_t(r)]; });
      ASSERT_TRUE(it != order.end()) << what << ": token " << got[size_t(r)] << " is not in the kept set of " << kept.size();
      double lo = 0.0;
      for (auto k = order.begin(); k != it; ++k) lo += k->p;
      EXPECT_TRUE(u >= lo - 1e-9 && u < lo + it->p + 1e-9)
          << what << ": token " << got[size_t(r)] << " holds [" << lo << ", " << lo + it->p << "), expected "
          << want.id << " [" << want.lo << ", " << want.hi << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, BackendOps, ::testing::Values(Target::CpuF32, Target::CpuBf16, Target::Cuda),
                         [](const ::testing::TestParamInfo<Target>& i) { return target_name(i.param); });

}  // namespace
}  // namespace gale
