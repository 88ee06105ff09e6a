// The loading pipeline's later stages (model/weights.h, model/transforms.h, backend.h):
// views with a row stride and their scales, the backend's `supports` check naming the tensor
// it refuses, transforms (pack_rows turns a refused strided view into rows the CPU runs), and
// the residual seam of tensor parallelism (partial outputs reduced into the residual stream
// give the fused path's logits).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>

#include "loader/safetensors.h"
#include "model/arch/arch.h"
#include "model/cpu_backend.h"
#include "model/fp8_quantize.h"
#include "model/kv_cache.h"
#include "model/transformer.h"
#include "model/transforms.h"
#include "model/weights.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;

namespace {

using Scales = WeightScheme::Scales;

struct Fixture {
  ModelConfig cfg;
  std::shared_ptr<SafeTensors> st;
  ModelWeights weights() const { return bind_weights(st, cfg); }
};

Fixture open_fixture(const std::string& name) {
  const std::string dir = test::fixtures_dir() + "/models/" + name;
  return {load_model_config(dir), std::make_shared<SafeTensors>(SafeTensors::open_dir(dir))};
}

std::vector<int32_t> prompt_of(const std::string& name) {
  return test::read_json(test::fixtures_dir() + "/models/" + name + "/reference.json")["prompt_ids"]
      .get<std::vector<int32_t>>();
}

// ---- views

TEST(WeightViews, RowsAndColumnsAddressTheirElementsAndScales) {
  // A 6 x 8 F32 matrix w[r][c] = 10 r + c with per-group scales (groups of 4): s[r][g] = r + g / 10.
  std::vector<float> w(48), s(12);
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 8; ++c) w[size_t(r * 8 + c)] = float(10 * r + c);
  for (int r = 0; r < 6; ++r)
    for (int g = 0; g < 2; ++g) s[size_t(r * 2 + g)] = float(r) + float(g) / 10;
  Linear l;
  l.w = w.data();
  l.out = 6;
  l.in = 8;
  l.bias = {0, 1, 2, 3, 4, 5};
  l.scheme.scales = Scales::PerGroup;
  l.scheme.group = 4;
  l.scheme.scale = s.data();

  const Linear rows = l.rows_view(2, 3);
  EXPECT_EQ(static_cast<const float*>(rows.w)[0], 20.0f);
  EXPECT_EQ(rows.bias, (std::vector<float>{2, 3, 4}));
  EXPECT_EQ(static_cast<const float*>(rows.scheme.scale)[0], 2.0f);
  EXPECT_TRUE(rows.packed_rows());

  const Linear cols = rows.cols_view(4, 4);  // rows 2..4, columns 4..7
  EXPECT_FALSE(cols.packed_rows());
  EXPECT_EQ(cols.row_stride(), 8);
  EXPECT_TRUE(cols.bias.empty());  // a partial product: the bias is added once, by its owner
  const float* cw = static_cast<const float*>(cols.w);
  const float* cs = static_cast<const float*>(cols.scheme.scale);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) EXPECT_EQ(cw[r * cols.row_stride() + c], float(10 * (r + 2) + c + 4));
    EXPECT_FLOAT_EQ(cs[r * cols.scheme.scale_ld], float(r + 2) + 0.1f);
  }
  EXPECT_EQ(describe_storage(cols), "F32, scales per group of 4, row stride 8");
}

TEST(WeightViews, PackedFourBitRowsCountHalfBytes) {
  std::vector<uint8_t> q(4 * 16 / 2);
  for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t(i);
  Linear l;
  l.w = q.data();
  l.dtype = DType::U8;
  l.out = 4;
  l.in = 16;
  l.scheme.packing = WeightScheme::Packing::U4;
  EXPECT_EQ(l.bytes(), 32u);
  EXPECT_EQ(static_cast<const uint8_t*>(l.rows_view(1, 2).w), q.data() + 8);
  EXPECT_EQ(static_cast<const uint8_t*>(l.cols_view(4, 12).w), q.data() + 2);
  EXPECT_EQ(describe_storage(l), "U8 packed 4-bit");
}

// ---- the backend's supports check

TEST(BackendSupports, ScaledMatrixIsRefusedByName) {
  const Fixture f = open_fixture("llama-f32");
  ModelWeights w = f.weights();
  static const float scale = 1.0f;
  w.layers[1].down.scheme.scales = Scales::PerTensor;
  w.layers[1].down.scheme.scale = &scale;
  try {
    Transformer m(f.cfg, std::move(w));
    FAIL() << "a scaled matrix was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'model.layers.1.mlp.down_proj.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("one scale"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu backend cannot run"), std::string::npos) << msg;
  }
}

TEST(BackendSupports, DenseDtypesInPackedRowsAreAccepted) {
  CpuBackend be(false);
  Linear l;
  l.out = 2;
  l.in = 3;
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2}) {
    l.dtype = d;
    EXPECT_TRUE(be.supports(l)) << dtype_name(d);
  }
  l.dtype = DType::I32;
  EXPECT_FALSE(be.supports(l));
  l.dtype = DType::BF16;
  l.ld = 5;
  EXPECT_FALSE(be.supports(l));
}

// ---- transforms

// Every matrix of the model copied into wider rows (stride in + 3), as a row-parallel shard
// of a larger tensor would be: the CPU refuses the views, pack_rows repacks them, and the
// logits are the original model's bit for bit.
TEST(Transforms, PackRowsMakesStridedViewsRunnable) {
  const std::string name = "qwen2-f32";  // biases too
  const Fixture f = open_fixture(name);
  const auto ids = prompt_of(name);
  Transformer plain(f.cfg, f.weights());
  const std::vector<float> want = test::all_logits(plain, ids);

  ModelWeights w = f.weights();
  for_each_linear(w, [&](Linear& l) {
    const int64_t ld = l.in + 3;
    const size_t es = dtype_size(l.dtype);
    auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[size_t(l.out * ld) * es]());
    for (int64_t r = 0; r < l.out; ++r)
      std::memcpy(buf.get() + size_t(r * ld) * es, static_cast<const uint8_t*>(l.w) + size_t(r * l.in) * es,
                  size_t(l.in) * es);
    Linear wide = l;
    wide.w = buf.get();
    wide.in = ld;
    wide.ld = 0;
    const std::string nm = l.name;
    std::vector<float> bias = l.bias;
    l = wide.cols_view(0, l.in);  // the original columns, strided
    l.bias = std::move(bias);
    l.name = nm;
    w.owned.push_back(std::move(buf));
  });
  {
    ModelWeights refused = w;
    EXPECT_THROW(Transformer(f.cfg, std::move(refused)), Error);
  }
  ModelConfig cfg = f.cfg;
  const WeightTransform ts[] = {identity_transform(), pack_rows()};
  apply_transforms(ts, cfg, w);
  for_each_linear(static_cast<const ModelWeights&>(w), [](const Linear& l) { EXPECT_TRUE(l.packed_rows()) << l.name; });
  Transformer packed(cfg, std::move(w));
  const std::vector<float> got = test::all_logits(packed, ids);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "logits differ";
}

TEST(Transforms, ErrorNamesTheTransform) {
  const Fixture f = open_fixture("llama-f32");
  ModelWeights w = f.weights();
  static const float scale = 1.0f;
  Linear& q = w.layers[0].q;
  q.scheme.scales = Scales::PerTensor;
  q.scheme.scale = &scale;
  q = q.cols_view(0, q.in / 2);
  ModelConfig cfg = f.cfg;
  const WeightTransform ts[] = {pack_rows()};
  try {
    apply_transforms(ts, cfg, w);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transform 'pack-rows': 'model.layers.0.self_attn.q_proj.weight'"),
              std::string::npos)
        << e.what();
  }
}

// --quantize-lm-head: the head becomes per-channel E4M3 (exactly quantize_fp8's codes and
// scales of the stored head), a tied embedding table stays as stored and is still gathered,
// and total_bytes counts the head's codes and scales beside the table.
TEST(Transforms, Fp8LmHeadIsQuantizedAndATiedTableKept) {
  for (const char* name : {"llama-f32", "qwen2-f32"}) {
    SCOPED_TRACE(name);
    const Fixture f = open_fixture(name);
    ModelWeights w = f.weights();
    const Linear head = w.lm_head;
    const bool tied = head.w == w.embed;
    const size_t before = w.total_bytes;
    const void* table = w.embed;
    ModelConfig cfg = f.cfg;
    const WeightTransform ts[] = {quantize_fp8_per_channel({}, /*lm_head=*/true)};
    apply_transforms(ts, cfg, w);
    ASSERT_EQ(w.lm_head.dtype, DType::F8_E4M3);
    ASSERT_EQ(w.lm_head.scheme.scales, Scales::PerChannel);
    EXPECT_EQ(w.embed, table);  // the table itself is untouched
    std::vector<uint8_t> codes(size_t(head.out * head.in));
    std::vector<float> scales(size_t(head.out));
    quantize_fp8(head.w, head.dtype, head.out, head.in, head.row_stride(), Fp8Granularity::Channel, 0, codes.data(),
                 scales.data());
    EXPECT_EQ(std::memcmp(w.lm_head.w, codes.data(), codes.size()), 0);
    EXPECT_EQ(std::memcmp(w.lm_head.scheme.scale, scales.data(), scales.size() * 4), 0);
    size_t layers_before = 0, layers_after = 0;
    for (const LayerWeights& L : f.weights().layers)
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) layers_before += l->bytes();
    for (const LayerWeights& L : w.layers)
      for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
        layers_after += l->bytes() + size_t(l->out) * 4;
    const size_t head_after = codes.size() + scales.size() * 4;
    EXPECT_EQ(w.total_bytes, before - layers_before + layers_after - (tied ? 0 : head.bytes()) + head_after);
    // The model runs, and its logits move (the head is lossy) but stay close.
    Transformer m(cfg, std::move(w));
    Transformer plain(f.cfg, f.weights());
    const auto ids = prompt_of(name);
    const std::vector<float> got = test::all_logits(m, ids), want = test::all_logits(plain, ids);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_NE(got, want);
  }
}

// ---- the residual seam

// A CPU backend that routes every block output through the seam, as a tensor-parallel
// backend with one rank would.
class PartialResidualBackend : public CpuBackend {
 public:
  explicit PartialResidualBackend(bool bf16) : CpuBackend(bf16) {}
  bool partial_residuals() const override { return true; }
  void reduce_add(Act partial, Act x) override {
    ++reductions;
    CpuBackend::reduce_add(partial, x);
  }
  int64_t reductions = 0;
};

class ResidualSeam : public ::testing::TestWithParam<std::string> {};

TEST_P(ResidualSeam, PartialOutputsReducedIntoTheResidualGiveTheSameLogits) {
  const std::string name = GetParam();
  const Fixture f = open_fixture(name);
  const auto ids = prompt_of(name);
  const ActDType act = name.find("f32") != std::string::npos ? ActDType::F32 : ActDType::BF16;
  Transformer fused(f.cfg, f.weights(), act);
  auto be = std::make_unique<PartialResidualBackend>(act == ActDType::BF16);
  PartialResidualBackend* seam = be.get();
  Transformer split(f.cfg, f.weights(), act, std::move(be));
  const std::vector<float> a = test::all_logits(fused, ids), b = test::all_logits(split, ids);
  EXPECT_EQ(seam->reductions, 2 * f.cfg.num_layers);  // attention and feed-forward of each layer
  ASSERT_EQ(a.size(), b.size());
  // x + (0 + y) is x + y exactly for one product; the experts' weighted sum is added to x once
  // instead of expert by expert, which may round the last bit differently.
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  if (f.cfg.num_experts == 0) {
    EXPECT_EQ(worst, 0.0);
  } else {
    EXPECT_LT(worst, 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ResidualSeam,
                         ::testing::Values("llama-f32", "qwen2-f32", "mixtral-f32", "phi3-f32", "mistral-bf16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (!isalnum(uint8_t(ch))) ch = '_';
                           return n;
                         });

}  // namespace
