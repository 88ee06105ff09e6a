// gale prune (model/prune.h), each method against a check computed here from the original
// tensors, never from the pruner's own output:
//   - the masks: exact per-row sparsity and the lowest scores gone (brute-force ranks), 2 of
//     every 4 in each group, ties to the lower column;
//   - magnitude / 2:4 on a checkpoint: each row's zeros are its lowest |W|, everything else byte
//     for byte as stored; Wanda on layer 0's q|k|v, whose input (RMSNorm of the embeddings) the
//     test computes itself: the zeros are each row's lowest |W| · ‖x_j‖₂;
//   - structured pruning at 0 % gives the original logits bit for bit; a synthetic model with
//     FFN channels, a KV group or a layer that contribute nothing by construction (zeroed
//     weights) loses exactly those, and its logits stay the same;
//   - the configs of the results, the loader's reading of compressed-tensors' sparsity_config,
//     and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <unistd.h>

#include "core/error.h"
#include "loader/config_reader.h"
#include "loader/quant_config.h"
#include "loader/safetensors.h"
#include "loader/safetensors_writer.h"
#include "model/arch/arch.h"
#include "model/model_loader.h"
#include "model/prune.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fixture(const std::string& name) { return test::fixtures_dir() + "/models/" + name; }

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("gale-prune-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

std::vector<int32_t> prompt(const std::string& dir, size_t n = 64) {
  auto ids = test::read_json(dir + "/reference.json")["prompt_ids"].get<std::vector<int32_t>>();
  ids.resize(n);
  return ids;
}

std::vector<float> logits_of(const std::string& dir, const std::vector<int32_t>& ids) {
  LoadedModel m = load_model(dir, BackendOptions{}, LoadOptions{});
  return test::all_logits(*m.model, ids);
}

std::vector<float> f32_of(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_f32(t.data, t.dtype, i);
  return v;
}

PruneSummary prune(const std::string& src, const fs::path& out, const std::string& method, double s,
                   std::vector<int32_t> calib = {}, const std::string& score = "") {
  PruneOptions o;
  o.source = src;
  o.out = out.string();
  o.method = method;
  o.sparsity = s;
  o.calib_tokens = std::move(calib);
  o.score = score;
  return prune_checkpoint(o);
}

// Element i is pruned by the rule iff fewer than k elements of its row precede it in
// (score, column) order: the brute-force statement of "the k lowest, ties to the lower column".
std::vector<uint8_t> brute_per_row(const std::vector<float>& s, int64_t rows, int64_t cols, int64_t k) {
  std::vector<uint8_t> m(s.size(), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) {
      int64_t before = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const float a = s[size_t(r * cols + j)], b = s[size_t(r * cols + i)];
        before += (a < b || (a == b && j < i)) ? 1 : 0;
      }
      m[size_t(r * cols + i)] = before < k;
    }
  return m;
}

TEST(PruneMask, PerRowIsTheLowestScoresExactly) {
  std::mt19937 g(7);
  std::uniform_int_distribution<int> d(0, 9);  // few values: many ties
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{5, 37}, {3, 64}, {1, 1}, {4, 8}})
    for (double sp : {0.0, 0.25, 0.5, 0.7, 0.99}) {
      std::vector<float> s(size_t(rows * cols));
      for (float& v : s) v = float(d(g));
      const auto m = prune_mask_per_row(s, rows, cols, sp);
      const int64_t k = int64_t(std::floor(sp * double(cols)));
      EXPECT_EQ(m, brute_per_row(s, rows, cols, k)) << rows << "x" << cols << " at " << sp;
      for (int64_t r = 0; r < rows; ++r)
        EXPECT_EQ(std::count(m.begin() + r * cols, m.begin() + (r + 1) * cols, 1), k);
    }
}

TEST(PruneMask, TwoOfEveryFour) {
  std::mt19937 g(3);
  std::uniform_int_distribution<int> d(0, 3);
  const int64_t rows = 6, cols = 40;
  std::vector<float> s(size_t(rows * cols));
  for (float& v : s) v = float(d(g));
  const auto m = prune_mask_24(s, rows, cols);
  for (size_t gi = 0; gi < s.size(); gi += 4) {
    const std::vector<float> grp(s.begin() + long(gi), s.begin() + long(gi) + 4);
    EXPECT_EQ(std::vector<uint8_t>(m.begin() + long(gi), m.begin() + long(gi) + 4), brute_per_row(grp, 1, 4, 2));
  }
}

TEST(PruneMask, ScoresAndKeep) {
  const std::vector<float> w = {-3, 1, 0.5f, -2};
  EXPECT_EQ(prune_scores(w, 2, 2, {}), (std::vector<float>{3, 1, 0.5f, 2}));
  const std::vector<float> n = {10, 1};
  EXPECT_EQ(prune_scores(w, 2, 2, n), (std::vector<float>{30, 1, 5, 2}));
  const std::vector<double> imp = {1, 5, 5, 0, 2};
  EXPECT_EQ(keep_most_important(imp, 3), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(keep_most_important(imp, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(keep_most_important(imp, 0), (std::vector<int64_t>{}));
}

// The refit solves its normal equations: with C = Σ x xᵀ and λ = 1 % of C[K, K]'s mean
// diagonal (computed here), (W' C[K, K] − W C[:, K]) + λ (W' − W[:, K]) = 0.
TEST(PruneMask, RefitSolvesTheLeastSquaresProblem) {
  std::mt19937 g(11);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t out = 5, in = 12, n = 40;
  std::vector<float> w(size_t(out * in)), x(size_t(n * in));
  for (float& v : w) v = d(g);
  for (float& v : x) v = d(g);
  for (int64_t t = 0; t < n; ++t) x[size_t(t * in + 7)] = 0.5f * x[size_t(t * in + 2)];  // a correlated column
  const std::vector<int64_t> keep = {0, 2, 3, 5, 8, 9, 11};
  const int64_t k = int64_t(keep.size());
  const std::vector<float> wr = prune_refit_columns(w, out, in, x, keep);
  ASSERT_EQ(int64_t(wr.size()), out * k);
  auto C = [&](int64_t a, int64_t b) {
    double s = 0;
    for (int64_t t = 0; t < n; ++t) s += double(x[size_t(t * in + a)]) * x[size_t(t * in + b)];
    return s;
  };
  double diag = 0;
  for (int64_t j : keep) diag += C(j, j);
  const double lambda = 0.01 * diag / double(k);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < k; ++j) {
      double grad = lambda * (wr[size_t(r * k + j)] - w[size_t(r * in + keep[size_t(j)])]), scale = 0;
      for (int64_t i = 0; i < k; ++i) grad += wr[size_t(r * k + i)] * C(keep[size_t(i)], keep[size_t(j)]);
      for (int64_t c = 0; c < in; ++c) {
        grad -= w[size_t(r * in + c)] * C(c, keep[size_t(j)]);
        scale += std::fabs(w[size_t(r * in + c)] * C(c, keep[size_t(j)]));
      }
      EXPECT_LT(std::fabs(grad), 1e-5 * scale) << r << "," << j;
    }
  // Refit beats the plain narrowing on the data (column 7's share moves to column 2).
  double err_refit = 0, err_plain = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < out; ++r) {
      double full = 0, a = 0, b = 0;
      for (int64_t c = 0; c < in; ++c) full += double(w[size_t(r * in + c)]) * x[size_t(t * in + c)];
      for (int64_t j = 0; j < k; ++j) {
        a += double(wr[size_t(r * k + j)]) * x[size_t(t * in + keep[size_t(j)])];
        b += double(w[size_t(r * in + keep[size_t(j)])]) * x[size_t(t * in + keep[size_t(j)])];
      }
      err_refit += (full - a) * (full - a), err_plain += (full - b) * (full - b);
    }
  double pen = 0;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < k; ++j) pen += std::pow(wr[size_t(r * k + j)] - w[size_t(r * in + keep[size_t(j)])], 2);
  EXPECT_LE(err_refit + lambda * pen, err_plain * (1 + 1e-9));  // the plain narrowing is one candidate
  EXPECT_LT(err_refit, 0.8 * err_plain);
}

// Every tensor of `out` against `src`: the projections' zeros follow `pruned(name, w)` (each
// row's elements to zero, computed by the caller from the original), the rest byte for byte.
void check_unstructured(const std::string& src, const fs::path& out,
                        const std::function<std::vector<uint8_t>(const std::string&, const TensorInfo&)>& pruned) {
  const SafeTensors a = SafeTensors::open_dir(src), b = SafeTensors::open_dir(out.string());
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& [name, t] : a.tensors()) {
    const TensorInfo* u = b.find(name);
    ASSERT_TRUE(u) << name;
    ASSERT_EQ(u->shape, t.shape);
    ASSERT_EQ(u->dtype, t.dtype);
    const bool proj = name.find("_proj.weight") != std::string::npos;
    if (!proj) {
      EXPECT_EQ(std::memcmp(u->data, t.data, t.nbytes), 0) << name << " changed";
      continue;
    }
    const std::vector<uint8_t> m = pruned(name, t);
    const std::vector<float> w = f32_of(t), v = f32_of(*u);
    size_t bad = 0;
    for (size_t i = 0; i < w.size(); ++i) bad += m[i] ? v[i] != 0.0f : v[i] != w[i];
    EXPECT_EQ(bad, 0u) << name;
  }
}

TEST(Prune, MagnitudeZeroesEachRowsSmallestWeights) {
  const std::string src = fixture("llama-f32");
  const fs::path out = temp_dir("mag");
  const PruneSummary s = prune(src, out, "magnitude", 0.3);
  check_unstructured(src, out, [](const std::string&, const TensorInfo& t) {
    std::vector<float> a = f32_of(t);
    for (float& x : a) x = std::fabs(x);
    return brute_per_row(a, t.shape[0], t.shape[1], int64_t(std::floor(0.3 * double(t.shape[1]))));
  });
  EXPECT_EQ(s.matrices, 14);
  EXPECT_GT(s.zeros, 0u);
  // compressed-tensors' metadata, and the loader reads it as plain weights.
  const json c = test::read_json((out / "config.json").string());
  EXPECT_EQ(c["quantization_config"]["quant_method"], "compressed-tensors");
  EXPECT_EQ(c["quantization_config"]["sparsity_config"]["format"], "dense");
  EXPECT_EQ(c["quantization_config"]["sparsity_config"]["sparsity_structure"], "unstructured");
  EXPECT_FALSE(load_model_config(out.string()).quant.quantized());
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  fs::remove_all(out);
}

TEST(Prune, TwoFourKeepsTheTwoLargestOfEachGroup) {
  const std::string src = fixture("llama-bf16");
  const fs::path out = temp_dir("24");
  prune(src, out, "2:4", NAN);
  check_unstructured(src, out, [](const std::string&, const TensorInfo& t) {
    std::vector<float> a = f32_of(t);
    std::vector<uint8_t> m(a.size());
    for (size_t g = 0; g < a.size(); g += 4) {
      std::vector<float> grp(4);
      for (int i = 0; i < 4; ++i) grp[size_t(i)] = std::fabs(a[g + size_t(i)]);
      const auto gm = brute_per_row(grp, 1, 4, 2);
      std::copy(gm.begin(), gm.end(), m.begin() + long(g));
    }
    return m;
  });
  EXPECT_EQ(test::read_json((out / "config.json").string())["quantization_config"]["sparsity_config"]["sparsity_structure"], "2:4");
  fs::remove_all(out);
}

// Layer 0's q, k and v read rmsnorm(embedding) · input_layernorm: computed here in double.
TEST(Prune, WandaScoresByTheInputNormMeasuredOnCalibrationText) {
  const std::string src = fixture("llama-f32");
  const fs::path out = temp_dir("wanda");
  const std::vector<int32_t> calib = prompt(src, 100);
  prune(src, out, "wanda", 0.5, calib);
  const SafeTensors a = SafeTensors::open_dir(src), b = SafeTensors::open_dir(out.string());
  const std::vector<float> emb = f32_of(*a.find("model.embed_tokens.weight")),
                           nw = f32_of(*a.find("model.layers.0.input_layernorm.weight"));
  const int64_t H = 64;
  std::vector<double> norm2(size_t(H), 0.0);
  for (int32_t tok : calib) {
    double ss = 0;
    for (int64_t c = 0; c < H; ++c) ss += double(emb[size_t(tok * H + c)]) * emb[size_t(tok * H + c)];
    const double inv = 1.0 / std::sqrt(ss / double(H) + 1e-5);
    for (int64_t c = 0; c < H; ++c) {
      const double x = emb[size_t(tok * H + c)] * inv * nw[size_t(c)];
      norm2[size_t(c)] += x * x;
    }
  }
  for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
    const std::string name = std::string("model.layers.0.self_attn.") + p + ".weight";
    const TensorInfo& t = *a.find(name);
    const std::vector<float> w = f32_of(t), v = f32_of(*b.find(name));
    const int64_t rows = t.shape[0], cols = t.shape[1];
    for (int64_t r = 0; r < rows; ++r) {
      double max_gone = 0, min_kept = 1e300;
      int64_t gone = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const size_t i = size_t(r * cols + c);
        const double score = std::fabs(w[i]) * std::sqrt(norm2[size_t(c)]);
        if (v[i] == 0.0f && w[i] != 0.0f) {
          ++gone;
          max_gone = std::max(max_gone, score);
        } else {
          EXPECT_EQ(v[i], w[i]);
          min_kept = std::min(min_kept, score);
        }
      }
      EXPECT_EQ(gone, cols / 2) << name << " row " << r;
      EXPECT_LE(max_gone, min_kept * (1 + 1e-5)) << name << " row " << r;  // f32 activations vs double here
    }
  }
  // Wanda differs from magnitude: the activation norms change some rows' choice.
  const fs::path mag = temp_dir("wanda-mag");
  prune(src, mag, "magnitude", 0.5);
  const SafeTensors c = SafeTensors::open_dir(mag.string());
  EXPECT_NE(f32_of(*c.find("model.layers.0.self_attn.q_proj.weight")),
            f32_of(*b.find("model.layers.0.self_attn.q_proj.weight")));
  fs::remove_all(out);
  fs::remove_all(mag);
}

TEST(Prune, StructuredAtZeroGivesTheOriginalLogits) {
  const std::string src = fixture("llama-f32");
  const std::vector<int32_t> ids = prompt(src);
  const std::vector<float> ref = logits_of(src, ids);
  for (const char* m : {"ffn-channels", "heads", "layers"}) {
    const fs::path out = temp_dir(std::string("zero-") + m);
    prune(src, out, m, 0.0, prompt(src, 100));
    EXPECT_EQ(logits_of(out.string(), ids), ref) << m;
    fs::remove_all(out);
  }
}

// The llama-f32 fixture rewritten with `edit` applied to its f32 tensors.
void rewrite_fixture(const fs::path& dst, const std::function<void(const std::string&, std::vector<float>&,
                                                                    const std::vector<int64_t>&)>& edit) {
  const std::string src = fixture("llama-f32");
  fs::create_directories(dst);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    fs::copy_file(fs::path(src) / f, dst / f);
  const SafeTensors st = SafeTensors::open_dir(src);
  std::vector<SafetensorsEntry> es;
  for (const auto& [name, t] : st.tensors()) es.push_back({name, DType::F32, t.shape});
  SafetensorsWriter w((dst / "model.safetensors").string(), safetensors_file_order(es));
  for (const SafetensorsEntry& e : w.entries()) {
    std::vector<float> v = f32_of(*st.find(e.name));
    edit(e.name, v, e.shape);
    w.write({reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4});
  }
  w.finish();
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0, scale = 1e-6;
  for (float x : b) scale = std::max(scale, double(std::fabs(x)));
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst / scale;
}

// Channels 3, 17, ... (32 of 128) of every layer have zero down columns: they contribute
// nothing, so ffn-channels 25 % removes exactly them and the logits stay.
TEST(Prune, FfnChannelsThatContributeNothingAreTheOnesRemoved) {
  const fs::path syn = temp_dir("syn-ffn"), out = temp_dir("syn-ffn-out");
  auto dead = [](int64_t j) { return j % 4 == 3; };
  rewrite_fixture(syn, [&](const std::string& name, std::vector<float>& v, const std::vector<int64_t>& shape) {
    if (name.find("down_proj") == std::string::npos) return;
    for (int64_t r = 0; r < shape[0]; ++r)
      for (int64_t j = 0; j < shape[1]; ++j)
        if (dead(j)) v[size_t(r * shape[1] + j)] = 0;
  });
  const std::vector<int32_t> ids = prompt(fixture("llama-f32"));
  prune(syn.string(), out, "ffn-channels", 0.25, prompt(fixture("llama-f32"), 100));
  EXPECT_EQ(test::read_json((out / "config.json").string())["intermediate_size"], 96);
  // The kept channels are the live ones, in order: gate's rows are the source's live rows.
  const SafeTensors a = SafeTensors::open_dir(syn.string()), b = SafeTensors::open_dir(out.string());
  const std::vector<float> g0 = f32_of(*a.find("model.layers.1.mlp.gate_proj.weight")),
                           g1 = f32_of(*b.find("model.layers.1.mlp.gate_proj.weight"));
  std::vector<float> live;
  for (int64_t j = 0; j < 128; ++j)
    if (!dead(j)) live.insert(live.end(), g0.begin() + j * 64, g0.begin() + (j + 1) * 64);
  EXPECT_EQ(g1, live);
  EXPECT_LT(max_rel_diff(logits_of(out.string(), ids), logits_of(syn.string(), ids)), 1e-5);
  fs::remove_all(syn);
  fs::remove_all(out);
}

// KV group 0's query heads (0 and 1) reach o through zeroed columns: heads 50 % removes group 0.
TEST(Prune, KvGroupThatContributesNothingIsTheOneRemoved) {
  const fs::path syn = temp_dir("syn-heads"), out = temp_dir("syn-heads-out");
  rewrite_fixture(syn, [&](const std::string& name, std::vector<float>& v, const std::vector<int64_t>& shape) {
    if (name.find("o_proj") == std::string::npos) return;
    for (int64_t r = 0; r < shape[0]; ++r)
      for (int64_t c = 0; c < 32; ++c) v[size_t(r * shape[1] + c)] = 0;  // 2 heads of 16
  });
  const std::vector<int32_t> ids = prompt(fixture("llama-f32"));
  prune(syn.string(), out, "heads", 0.5, prompt(fixture("llama-f32"), 100));
  const json c = test::read_json((out / "config.json").string());
  EXPECT_EQ(c["num_attention_heads"], 2);
  EXPECT_EQ(c["num_key_value_heads"], 1);
  EXPECT_EQ(c["head_dim"], 16);
  const SafeTensors a = SafeTensors::open_dir(syn.string()), b = SafeTensors::open_dir(out.string());
  const std::vector<float> k0 = f32_of(*a.find("model.layers.0.self_attn.k_proj.weight")),
                           k1 = f32_of(*b.find("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_EQ(k1, std::vector<float>(k0.begin() + 16 * 64, k0.end()));  // group 1's rows
  EXPECT_EQ(b.find("model.layers.0.self_attn.q_proj.weight")->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(b.find("model.layers.0.self_attn.o_proj.weight")->shape, (std::vector<int64_t>{64, 32}));
  EXPECT_LT(max_rel_diff(logits_of(out.string(), ids), logits_of(syn.string(), ids)), 1e-5);
  fs::remove_all(syn);
  fs::remove_all(out);
}

// Layer 0 adds nothing to the residual stream (o and down zeroed): its output equals its input
// (cosine 1), so layers 50 % removes it and renumbers layer 1 as 0.
TEST(Prune, LayerThatChangesNothingIsTheOneRemoved) {
  const fs::path syn = temp_dir("syn-layers"), out = temp_dir("syn-layers-out");
  rewrite_fixture(syn, [&](const std::string& name, std::vector<float>& v, const std::vector<int64_t>&) {
    if (name == "model.layers.0.self_attn.o_proj.weight" || name == "model.layers.0.mlp.down_proj.weight")
      std::fill(v.begin(), v.end(), 0.0f);
  });
  const std::vector<int32_t> ids = prompt(fixture("llama-f32"));
  const PruneSummary s = prune(syn.string(), out, "layers", 0.5, prompt(fixture("llama-f32"), 100));
  EXPECT_EQ(test::read_json((out / "config.json").string())["num_hidden_layers"], 1);
  EXPECT_NE(s.change.find("removed 0"), std::string::npos) << s.change;
  const SafeTensors a = SafeTensors::open_dir(syn.string()), b = SafeTensors::open_dir(out.string());
  EXPECT_EQ(f32_of(*b.find("model.layers.0.mlp.up_proj.weight")), f32_of(*a.find("model.layers.1.mlp.up_proj.weight")));
  EXPECT_FALSE(b.find("model.layers.1.mlp.up_proj.weight"));
  EXPECT_LT(max_rel_diff(logits_of(out.string(), ids), logits_of(syn.string(), ids)), 1e-5);
  fs::remove_all(syn);
  fs::remove_all(out);
}

// Biases (Qwen2's q|k|v), q/k norms (Qwen3), experts (Mixtral) and fused tensors (Phi-3): what
// each method takes loads back and runs; what it cannot take is refused by name.
TEST(Prune, OtherArchitectures) {
  auto finite = [](const std::vector<float>& v) {
    return !v.empty() && std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
  };
  const fs::path out = temp_dir("arch");
  {
    const std::string src = fixture("qwen2-f32");
    const std::vector<int32_t> ids = prompt(src);
    prune(src, out, "heads", 0.0, prompt(src, 100));
    EXPECT_EQ(logits_of(out.string(), ids), logits_of(src, ids));
    fs::remove_all(out);
    prune(src, out, "ffn-channels", 0.25, prompt(src, 100));
    EXPECT_TRUE(finite(logits_of(out.string(), ids)));
    fs::remove_all(out);
  }
  {
    const std::string src = fixture("qwen3-f32");
    prune(src, out, "heads", 0.5, prompt(src, 100));
    const json c = test::read_json((out / "config.json").string());
    EXPECT_EQ(c["num_attention_heads"], 2);
    EXPECT_EQ(c["num_key_value_heads"], 1);
    EXPECT_EQ(c["head_dim"], 32);
    EXPECT_TRUE(finite(logits_of(out.string(), prompt(src))));
    fs::remove_all(out);
  }
  for (const char* name : {"mixtral-f32", "phi3-f32"}) {
    const std::string src = fixture(name);
    for (const char* m : {"magnitude", "wanda", "layers"}) {
      prune(src, out, m, 0.5, std::string(m) == "magnitude" ? std::vector<int32_t>{} : prompt(src, 100));
      EXPECT_TRUE(finite(logits_of(out.string(), prompt(src)))) << name << " " << m;
      fs::remove_all(out);
    }
  }
  EXPECT_THROW(prune(fixture("mixtral-f32"), out, "ffn-channels", 0.25, prompt(fixture("mixtral-f32"), 100)), Error);
  EXPECT_THROW(prune(fixture("phi3-f32"), out, "heads", 0.5, prompt(fixture("phi3-f32"), 100)), Error);
  EXPECT_THROW(prune(fixture("phi3-f32"), out, "ffn-channels", 0.25, prompt(fixture("phi3-f32"), 100)), Error);
  EXPECT_FALSE(fs::exists(out));
}

TEST(Prune, Errors) {
  const std::string src = fixture("llama-f32");
  const fs::path out = temp_dir("err");
  auto fails = [&](const std::string& method, double s, std::vector<int32_t> calib, const std::string& score,
                   const std::string& msg) {
    try {
      prune(src, out, method, s, std::move(calib), score);
      ADD_FAILURE() << method << " " << s << " did not fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(out));
  };
  fails("random", 0.5, {}, "", "--method must be");
  fails("magnitude", 1.0, {}, "", "--sparsity must be in [0, 1)");
  fails("magnitude", -0.5, {}, "", "--sparsity must be in [0, 1)");
  fails("magnitude", NAN, {}, "", "--sparsity is required");
  fails("2:4", 0.3, {}, "", "--sparsity must be 0.5");
  fails("2:4", NAN, {}, "best", "--score must be");
  fails("wanda", 0.5, {}, "", "needs --calib");
  fails("2:4", NAN, {}, "wanda", "needs --calib");
  fails("ffn-channels", 0.5, {1, 2, 3}, "", "at least 16 tokens");
  fails("layers", 0.9, prompt(src, 50), "", "would remove all 2 layers");
  fails("heads", 0.8, prompt(src, 50), "", "would remove all 2 KV head groups");
  fails("magnitude", 0.5, {}, "wanda", "--score applies to --method 2:4");
}

TEST(Prune, LoaderReadsDenseSparsityAndRefusesCompressedLayouts) {
  auto parse = [](const json& q) { return parse_quant_config(ConfigReader{json{{"quantization_config", q}}, "config.json"}); };
  const json dense = {{"quant_method", "compressed-tensors"}, {"format", "dense"},
                      {"sparsity_config", {{"format", "dense"}, {"sparsity_structure", "2:4"}}}};
  EXPECT_FALSE(parse(dense).quantized());
  json bitmask = dense;
  bitmask["sparsity_config"]["format"] = "sparse-24-bitmask";
  try {
    parse(bitmask);
    ADD_FAILURE() << "sparse-24-bitmask was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sparse-24-bitmask"), std::string::npos) << e.what();
  }
  // Without sparsity, compressed-tensors still needs its quantization group.
  EXPECT_THROW(parse(json{{"quant_method", "compressed-tensors"}}), Error);
}

}  // namespace
