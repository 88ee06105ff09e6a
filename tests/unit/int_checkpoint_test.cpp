// Integer checkpoints as published (loader/quant_config.h, model/int_checkpoint.h): AWQ (gemm),
// GPTQ (v1 and v2, 4 and 8 bits, act-order), compressed-tensors pack-quantized and
// int-quantized. Each is made here from known codes, zero points and scales by a packer written
// from the formats' own descriptions (AutoAWQ's GEMM pack order, GPTQ's input-dim packing and
// v1 zero offset, compressed-tensors' pack_to_int32 with its 2^(bits-1) offset and zero points
// packed along the output dim), independent of the loader's unpacking: every projection of the
// llama fixture replaced by such tensors must load into weights equal to (u − z) · s of the
// codes it was packed from, and every malformed variant must fail with one error naming the
// tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include "core/error.h"
#include "model/arch/arch.h"
#include "loader/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "int_test_util.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace gale;
using nlohmann::json;

namespace {

enum class Kind { Awq, GptqV1, GptqV2, CtPacked, CtInt };

struct Spec {
  Kind kind;
  int bits = 4;
  int64_t group = 32;  // 0: per channel
  bool symmetric = false;
  bool act_order = false;
  const char* name;
};
void PrintTo(const Spec& s, std::ostream* os) { *os << s.name; }

// Known integer weights of one [out, in] matrix: unsigned codes u, unsigned zero points z and
// scales s (exact in F16), in the model's input order; g_idx the group of each input.
struct Truth {
  int bits;
  int64_t out, in, groups;
  std::vector<uint32_t> u;      // [out, in]
  std::vector<uint32_t> z;      // [out, groups]
  std::vector<float> s;         // [out, groups]
  std::vector<int32_t> g_idx;   // [in]
  float weight(int64_t n, int64_t k) const {
    const size_t gi = size_t(n * groups + g_idx[size_t(k)]);
    return float(int(u[size_t(n * in + k)]) - int(z[gi])) * s[gi];
  }
};

Truth make_truth(const Spec& sp, int64_t out, int64_t in, std::mt19937& rng) {
  Truth t{sp.bits, out, in, sp.group ? (in + sp.group - 1) / sp.group : 1, {}, {}, {}, {}};
  const uint32_t levels = 1u << sp.bits, mid = levels / 2;
  std::uniform_int_distribution<uint32_t> code(0, levels - 1);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  t.u.resize(size_t(out * in));
  for (auto& v : t.u) v = code(rng);
  t.z.resize(size_t(out * t.groups));
  t.s.resize(t.z.size());
  for (size_t i = 0; i < t.z.size(); ++i) {
    t.z[i] = sp.symmetric ? mid : code(rng);
    t.s[i] = f16_to_f32(f32_to_f16(scale(rng)));
  }
  // Act order: inputs visited in a random order, the i-th visited one in group i / group.
  std::vector<int32_t> order(static_cast<size_t>(in));
  std::iota(order.begin(), order.end(), 0);
  if (sp.act_order) std::shuffle(order.begin(), order.end(), rng);
  t.g_idx.resize(size_t(in));
  for (int64_t i = 0; i < in; ++i) t.g_idx[size_t(order[size_t(i)])] = int32_t(sp.group ? i / sp.group : 0);
  return t;
}

std::vector<uint8_t> i32_bytes(const std::vector<uint32_t>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}
std::vector<uint8_t> f16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = f32_to_f16(v[i]);
    std::memcpy(b.data() + 2 * i, &h, 2);
  }
  return b;
}
std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

using Entries = std::vector<test::Blob::Entry>;

// AutoAWQ WQLinear_GEMM: the [in, out] integer matrix, each int32 holding 8 consecutive output
// columns with column order_map[i] of the 8 in nibble i; zeros [groups, out] the same way.
void pack_awq(const Truth& t, const std::string& m, Entries& es) {
  static const int order_map[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  const int64_t words = t.out / 8;
  std::vector<uint32_t> qw(size_t(t.in * words), 0), qz(size_t(t.groups * words), 0);
  std::vector<float> sc(size_t(t.groups * t.out));
  for (int64_t k = 0; k < t.in; ++k)
    for (int64_t j = 0; j < words; ++j)
      for (int i = 0; i < 8; ++i) qw[size_t(k * words + j)] |= t.u[size_t((j * 8 + order_map[i]) * t.in + k)] << (4 * i);
  for (int64_t g = 0; g < t.groups; ++g) {
    for (int64_t j = 0; j < words; ++j)
      for (int i = 0; i < 8; ++i) qz[size_t(g * words + j)] |= t.z[size_t((j * 8 + order_map[i]) * t.groups + g)] << (4 * i);
    for (int64_t n = 0; n < t.out; ++n) sc[size_t(g * t.out + n)] = t.s[size_t(n * t.groups + g)];
  }
  es.push_back({m + ".qweight", DType::I32, {t.in, words}, i32_bytes(qw)});
  es.push_back({m + ".qzeros", DType::I32, {t.groups, words}, i32_bytes(qz)});
  es.push_back({m + ".scales", DType::F16, {t.groups, t.out}, f16_bytes(sc)});
}

// GPTQ: 32 / bits consecutive inputs per int32 of column n (qweight [in·bits/32, out]); zero
// points 32 / bits consecutive outputs per int32 ([groups, out·bits/32]); v1 stores z − 1.
void pack_gptq(const Truth& t, bool v1, const std::string& m, Entries& es) {
  const int per = 32 / t.bits;
  const uint32_t mask = (1u << t.bits) - 1;
  std::vector<uint32_t> qw(size_t(t.in / per * t.out), 0), qz(size_t(t.groups * t.out / per), 0);
  std::vector<float> sc(size_t(t.groups * t.out));
  for (int64_t r = 0; r < t.in / per; ++r)
    for (int64_t n = 0; n < t.out; ++n)
      for (int i = 0; i < per; ++i) qw[size_t(r * t.out + n)] |= t.u[size_t(n * t.in + r * per + i)] << (t.bits * i);
  for (int64_t g = 0; g < t.groups; ++g) {
    for (int64_t j = 0; j < t.out / per; ++j)
      for (int i = 0; i < per; ++i)
        qz[size_t(g * (t.out / per) + j)] |= ((t.z[size_t((j * per + i) * t.groups + g)] - (v1 ? 1 : 0)) & mask) << (t.bits * i);
    for (int64_t n = 0; n < t.out; ++n) sc[size_t(g * t.out + n)] = t.s[size_t(n * t.groups + g)];
  }
  es.push_back({m + ".qweight", DType::I32, {t.in / per, t.out}, i32_bytes(qw)});
  es.push_back({m + ".qzeros", DType::I32, {t.groups, t.out / per}, i32_bytes(qz)});
  es.push_back({m + ".scales", DType::F16, {t.groups, t.out}, f16_bytes(sc)});
  std::vector<uint8_t> gb(size_t(t.in) * 4);
  std::memcpy(gb.data(), t.g_idx.data(), gb.size());
  es.push_back({m + ".g_idx", DType::I32, {t.in}, gb});
}

// compressed-tensors: the signed value v = u − 2^(bits−1) stored as v + 2^(bits−1) (pack_to_int32),
// 32 / bits consecutive inputs per int32 of row n; asymmetric zero points packed the same way
// along the output dim; int-quantized stores v itself as int8.
void pack_ct(const Truth& t, bool packed, bool symmetric, bool act_order, const std::string& m, Entries& es) {
  const int per = 32 / t.bits;
  if (packed) {
    const int64_t words = (t.in + per - 1) / per;
    std::vector<uint32_t> wp(size_t(t.out * words), 0);
    for (int64_t n = 0; n < t.out; ++n)
      for (int64_t k = 0; k < t.in; ++k) wp[size_t(n * words + k / per)] |= t.u[size_t(n * t.in + k)] << (t.bits * (k % per));
    es.push_back({m + ".weight_packed", DType::I32, {t.out, words}, i32_bytes(wp)});
    const int64_t shape[2] = {t.out, t.in};
    std::vector<uint8_t> sb(16);
    std::memcpy(sb.data(), shape, 16);
    es.push_back({m + ".weight_shape", DType::I64, {2}, sb});
  } else {
    std::vector<uint8_t> w(size_t(t.out * t.in));
    for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(int8_t(int(t.u[i]) - (1 << (t.bits - 1))));
    es.push_back({m + ".weight", DType::I8, {t.out, t.in}, w});
  }
  es.push_back({m + ".weight_scale", DType::F32, {t.out, t.groups}, f32_bytes(t.s)});
  if (!symmetric) {
    const int64_t rows = (t.out + per - 1) / per;
    std::vector<uint32_t> zp(size_t(rows * t.groups), 0);
    for (int64_t n = 0; n < t.out; ++n)
      for (int64_t g = 0; g < t.groups; ++g) zp[size_t((n / per) * t.groups + g)] |= t.z[size_t(n * t.groups + g)] << (t.bits * (n % per));
    es.push_back({m + ".weight_zero_point", DType::I32, {rows, t.groups}, i32_bytes(zp)});
  }
  if (act_order) {
    std::vector<uint8_t> gb(size_t(t.in) * 4);
    std::memcpy(gb.data(), t.g_idx.data(), gb.size());
    es.push_back({m + ".weight_g_idx", DType::I32, {t.in}, gb});
  }
}

json quant_config(const Spec& sp) {
  switch (sp.kind) {
    case Kind::Awq:
      return {{"quant_method", "awq"}, {"bits", 4}, {"group_size", sp.group}, {"zero_point", true},
              {"version", "gemm"}, {"modules_to_not_convert", {"down_proj"}}};
    case Kind::GptqV1:
    case Kind::GptqV2:
      return {{"quant_method", "gptq"}, {"bits", sp.bits}, {"group_size", sp.group ? sp.group : -1},
              {"sym", sp.symmetric}, {"desc_act", sp.act_order},
              {"checkpoint_format", sp.kind == Kind::GptqV1 ? "gptq" : "gptq_v2"}};
    case Kind::CtPacked:
    case Kind::CtInt: {
      json w = {{"num_bits", sp.bits}, {"type", "int"}, {"symmetric", sp.symmetric}, {"dynamic", false},
                {"strategy", sp.group ? "group" : "channel"}, {"group_size", sp.group ? json(sp.group) : json()},
                {"actorder", sp.act_order ? json("group") : json()}};
      return {{"quant_method", "compressed-tensors"},
              {"format", sp.kind == Kind::CtPacked ? "pack-quantized" : "int-quantized"},
              {"quantization_status", "compressed"},
              {"ignore", {"lm_head", "model.layers.1.mlp.down_proj"}},
              {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", w}}}}}};
    }
  }
  return {};
}

struct Made {
  json config;
  Entries entries;
  std::map<std::string, Truth> truth;  // by module
};

bool is_projection(const std::string& name) {
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(std::string(p) + ".weight") != std::string::npos) return true;
  return false;
}

// llama-f32 with every projection but layer 1's down_proj (kept, as the config's ignore or
// modules_to_not_convert says) in the format of sp.
Made make_checkpoint(const Spec& sp, uint32_t seed = 1) {
  const std::string dir = test::fixtures_dir() + "/models/llama-f32";
  Made m;
  m.config = test::read_json(dir + "/config.json");
  m.config["quantization_config"] = quant_config(sp);
  const SafeTensors st = SafeTensors::open_dir(dir);
  std::mt19937 rng(seed);
  for (const auto& [name, t] : st.tensors()) {
    const std::string module = name.substr(0, name.size() - 7);
    if (!is_projection(name) || module == "model.layers.1.mlp.down_proj") {
      m.entries.push_back({name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
      continue;
    }
    Truth tr = make_truth(sp, t.shape[0], t.shape[1], rng);
    switch (sp.kind) {
      case Kind::Awq: pack_awq(tr, module, m.entries); break;
      case Kind::GptqV1: pack_gptq(tr, true, module, m.entries); break;
      case Kind::GptqV2: pack_gptq(tr, false, module, m.entries); break;
      case Kind::CtPacked: pack_ct(tr, true, sp.symmetric, sp.act_order, module, m.entries); break;
      case Kind::CtInt: pack_ct(tr, false, sp.symmetric, sp.act_order, module, m.entries); break;
    }
    m.truth.emplace(module, std::move(tr));
  }
  return m;
}

std::shared_ptr<SafeTensors> open_entries(const Entries& es) {
  test::Blob b;
  b.entries = es;
  auto blob = b.build();
  return std::make_shared<SafeTensors>(SafeTensors::from_memory(blob, blob->data(), blob->size(), "test blob"));
}

std::string bind_error(const json& config, const Entries& es) {
  try {
    const ModelConfig c = parse_model_config(config);
    bind_weights(open_entries(es), c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class IntCheckpoint : public ::testing::TestWithParam<Spec> {};

TEST_P(IntCheckpoint, LoadsTheWeightsItWasPackedFrom) {
  const Spec& sp = GetParam();
  const Made m = make_checkpoint(sp);
  const ModelConfig cfg = parse_model_config(m.config);
  ASSERT_TRUE(cfg.quant.integer());
  const ModelWeights w = bind_weights(open_entries(m.entries), cfg);
  int checked = 0;
  for_each_projection(w, [&](const Linear& l) {
    const std::string module = l.name.substr(0, l.name.rfind('.'));
    auto it = m.truth.find(module);
    if (it == m.truth.end()) {  // the kept module: plain F32
      EXPECT_EQ(l.dtype, DType::F32) << l.name;
      EXPECT_TRUE(l.scheme.plain()) << l.name;
      return;
    }
    ++checked;
    const Truth& t = it->second;
    ASSERT_TRUE(l.integer_weights()) << l.name << ": " << describe_storage(l);
    EXPECT_EQ(l.dtype, sp.bits == 8 ? DType::I8 : DType::U8) << l.name;
    EXPECT_EQ(l.scheme.scales, sp.group ? WeightScheme::Scales::PerGroup : WeightScheme::Scales::PerChannel);
    // Zero points only where they are not all the symmetric 2^(bits−1).
    EXPECT_EQ(l.scheme.zero != nullptr, !sp.symmetric) << l.name;
    EXPECT_EQ(l.scheme.in_perm != nullptr, sp.act_order && sp.group != 0 && t.in > sp.group) << l.name;
    const std::vector<float> got = test::dequantize_int(l);
    int bad = 0;
    for (int64_t n = 0; n < t.out; ++n)
      for (int64_t k = 0; k < t.in; ++k)
        if (got[size_t(n * t.in + k)] != t.weight(n, k) && ++bad <= 3)
          ADD_FAILURE() << l.name << " (" << n << ", " << k << "): " << got[size_t(n * t.in + k)] << " vs "
                        << t.weight(n, k);
    EXPECT_EQ(bad, 0) << l.name;
  });
  EXPECT_EQ(checked, 13);  // 2 layers x 7 projections, one kept
  EXPECT_EQ(w.lm_head.dtype, DType::F32);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, IntCheckpoint,
    ::testing::Values(Spec{Kind::Awq, 4, 32, false, false, "awq_g32"}, Spec{Kind::Awq, 4, 64, false, false, "awq_g64"},
                      Spec{Kind::GptqV1, 4, 32, true, false, "gptq_v1_4bit_sym"},
                      Spec{Kind::GptqV1, 4, 32, false, false, "gptq_v1_4bit_asym"},
                      Spec{Kind::GptqV1, 4, 32, true, true, "gptq_v1_4bit_act_order"},
                      Spec{Kind::GptqV2, 4, 64, false, true, "gptq_v2_4bit_asym_act_order"},
                      Spec{Kind::GptqV1, 4, 0, true, false, "gptq_v1_4bit_per_channel"},
                      Spec{Kind::GptqV1, 8, 32, true, false, "gptq_v1_8bit"},
                      Spec{Kind::GptqV2, 8, 0, true, true, "gptq_v2_8bit_per_channel_desc_act"},
                      Spec{Kind::CtPacked, 4, 32, true, false, "ct_pack_int4_sym_g32"},
                      Spec{Kind::CtPacked, 4, 64, false, false, "ct_pack_int4_asym_g64"},
                      Spec{Kind::CtPacked, 4, 0, true, false, "ct_pack_int4_channel"},
                      Spec{Kind::CtPacked, 4, 32, true, true, "ct_pack_int4_actorder_group"},
                      Spec{Kind::CtPacked, 8, 0, true, false, "ct_pack_int8_channel"},
                      Spec{Kind::CtInt, 8, 0, true, false, "ct_int8_channel"},
                      Spec{Kind::CtInt, 8, 32, true, false, "ct_int8_g32"}),
    [](const auto& info) { return std::string(info.param.name); });

// Rebuilds m's entries with `edit` applied.
Entries edited(const Made& m, const std::function<void(Entries&)>& edit) {
  Entries es = m.entries;
  edit(es);
  return es;
}

test::Blob::Entry& entry(Entries& es, const std::string& name) {
  for (auto& e : es)
    if (e.name == name) return e;
  throw std::runtime_error("no entry " + name);
}

#define EXPECT_ERROR_HAS(err, text) EXPECT_NE((err).find(text), std::string::npos) << (err)

TEST(IntCheckpointErrors, AwqTensorsOfTheWrongShapeDtypeOrMissingAreNamed) {
  const Spec sp{Kind::Awq, 4, 32, false, false, "awq"};
  const Made m = make_checkpoint(sp);
  ASSERT_EQ(bind_error(m.config, m.entries), "");
  const std::string q = "model.layers.0.self_attn.q_proj";
  std::string e = bind_error(m.config, edited(m, [&](Entries& es) { entry(es, q + ".qzeros").shape = {1, 16}; }));
  EXPECT_ERROR_HAS(e, "'" + q + ".qzeros' has shape [1, 16]");
  e = bind_error(m.config, edited(m, [&](Entries& es) {
    std::erase_if(es, [&](const auto& x) { return x.name == q + ".scales"; });
  }));
  EXPECT_ERROR_HAS(e, "no '" + q + ".scales'");
  e = bind_error(m.config, edited(m, [&](Entries& es) { entry(es, q + ".scales").dtype = DType::I32;
                                                         entry(es, q + ".scales").shape = {1, 64}; }));
  EXPECT_ERROR_HAS(e, "'" + q + ".scales' has dtype I32");
  // A stray zero-point tensor beside the kept 16-bit module would be silently unused.
  e = bind_error(m.config, edited(m, [&](Entries& es) {
    es.push_back({"model.layers.1.mlp.down_proj.qzeros", DType::I32, {4, 8}, std::vector<uint8_t>(128, 0)});
  }));
  EXPECT_ERROR_HAS(e, "model.layers.1.mlp.down_proj.qzeros");
  // The same packed tensors without quantization_config: refused, not read as something else.
  json plain = m.config;
  plain.erase("quantization_config");
  EXPECT_NE(bind_error(plain, m.entries), "");
}

TEST(IntCheckpointErrors, GptqBadGroupIndexAndAsymmetric8BitAreNamed) {
  const std::string q = "model.layers.0.self_attn.q_proj";
  const Made m = make_checkpoint({Kind::GptqV1, 4, 32, true, true, "act"});
  ASSERT_EQ(bind_error(m.config, m.entries), "");
  // Group 0 given to 33 inputs: no run of 32 columns per scale.
  std::string e = bind_error(m.config, edited(m, [&](Entries& es) {
    auto& g = entry(es, q + ".g_idx");
    int32_t* v = reinterpret_cast<int32_t*>(g.bytes.data());
    for (int i = 0; i < 64; ++i)
      if (v[i] == 1) { v[i] = 0; break; }
  }));
  EXPECT_ERROR_HAS(e, "'" + q + ".g_idx' does not give each group 32 inputs");
  e = bind_error(m.config, edited(m, [&](Entries& es) {
    reinterpret_cast<int32_t*>(entry(es, q + ".g_idx").bytes.data())[5] = 7;
  }));
  EXPECT_ERROR_HAS(e, "'" + q + ".g_idx' gives input 5 group 7, outside [0, 2)");
  // 8-bit with a zero point other than 128: INT8 has none.
  const Made m8 = make_checkpoint({Kind::GptqV2, 8, 32, true, false, "int8"});
  e = bind_error(m8.config, edited(m8, [&](Entries& es) { entry(es, q + ".qzeros").bytes[0] ^= 1; }));
  EXPECT_ERROR_HAS(e, "'" + q + ".qzeros' holds zero point");
}

TEST(IntCheckpointErrors, CompressedTensorsShapeAndRangeAreChecked) {
  const std::string q = "model.layers.0.self_attn.q_proj";
  const Made m = make_checkpoint({Kind::CtPacked, 4, 32, false, false, "asym"});
  ASSERT_EQ(bind_error(m.config, m.entries), "");
  std::string e = bind_error(m.config, edited(m, [&](Entries& es) {
    reinterpret_cast<int64_t*>(entry(es, q + ".weight_shape").bytes.data())[1] = 65;
  }));
  EXPECT_ERROR_HAS(e, "'" + q + ".weight_shape' says [64, 65]");
  e = bind_error(m.config, edited(m, [&](Entries& es) {
    std::erase_if(es, [&](const auto& x) { return x.name == q + ".weight_zero_point"; });
  }));
  EXPECT_ERROR_HAS(e, "no '" + q + ".weight_zero_point'");
  // A non-finite scale.
  e = bind_error(m.config, edited(m, [&](Entries& es) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(entry(es, q + ".weight_scale").bytes.data(), &nan, 4);
  }));
  EXPECT_ERROR_HAS(e, "'" + q + ".weight_scale' holds a non-finite scale");
  // int-quantized 4-bit values one per int8 must lie in [-8, 7].
  const Made m4 = make_checkpoint({Kind::CtInt, 4, 32, true, false, "int4"});
  ASSERT_EQ(bind_error(m4.config, m4.entries), "");
  e = bind_error(m4.config, edited(m4, [&](Entries& es) { entry(es, q + ".weight").bytes[3] = 9; }));
  EXPECT_ERROR_HAS(e, "'" + q + ".weight' holds 9, outside the 4-bit range");
}

std::string config_error(const json& qc) {
  json c = test::read_json(test::fixtures_dir() + "/models/llama-f32/config.json");
  c["quantization_config"] = qc;
  try {
    parse_model_config(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(IntQuantConfig, UnsupportedVariantsAreRefusedByName) {
  EXPECT_ERROR_HAS(config_error({{"quant_method", "gptq"}, {"bits", 3}, {"group_size", 128}}), "'bits' is 3");
  EXPECT_ERROR_HAS(config_error({{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 100}}), "'group_size' is 100");
  EXPECT_ERROR_HAS(config_error({{"quant_method", "gptq"}, {"bits", 8}, {"group_size", 128}, {"sym", false}}),
                   "'sym' is false");
  EXPECT_ERROR_HAS(config_error({{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}, {"checkpoint_format", "marlin"}}),
                   "'checkpoint_format' is 'marlin'");
  EXPECT_ERROR_HAS(config_error({{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}, {"version", "gemv"}}),
                   "'version' is 'gemv'");
  EXPECT_ERROR_HAS(config_error({{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}, {"zero_point", false}}),
                   "'zero_point' must be true");
  json w = {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"strategy", "tensor"}};
  json ct = {{"quant_method", "compressed-tensors"}, {"format", "pack-quantized"},
             {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", w}}}}}};
  EXPECT_ERROR_HAS(config_error(ct), "'strategy' is 'tensor'");
  ct["config_groups"]["group_0"]["weights"]["strategy"] = "group";
  ct["config_groups"]["group_0"]["weights"]["group_size"] = 16;
  EXPECT_ERROR_HAS(config_error(ct), "'group_size' is 16");
  ct["config_groups"]["group_0"]["weights"]["group_size"] = 128;
  ct["format"] = "float-quantized";
  EXPECT_ERROR_HAS(config_error(ct), "'format' is 'float-quantized'");
  ct["format"] = "pack-quantized";
  ct["config_groups"]["group_0"]["input_activations"] = {{"num_bits", 8}, {"type", "int"}, {"dynamic", false}};
  EXPECT_ERROR_HAS(config_error(ct), "static activation scales");
}

TEST(IntQuantConfig, DescribesTheFormat) {
  auto describe = [](const json& qc) {
    json c = test::read_json(test::fixtures_dir() + "/models/llama-f32/config.json");
    c["quantization_config"] = qc;
    return parse_model_config(c).quant.describe();
  };
  EXPECT_EQ(describe(quant_config({Kind::Awq, 4, 128, false, false, ""})), "AWQ (gemm) INT4, groups of 128, zero points");
  EXPECT_EQ(describe(quant_config({Kind::GptqV1, 4, 128, true, true, ""})),
            "GPTQ (gptq) INT4, groups of 128, symmetric, act-order");
  EXPECT_EQ(describe(quant_config({Kind::GptqV2, 8, 0, true, false, ""})), "GPTQ (gptq_v2) INT8, per-channel scales, symmetric");
  EXPECT_EQ(describe(quant_config({Kind::CtPacked, 4, 32, false, false, ""})),
            "compressed-tensors pack-quantized INT4, groups of 32, zero points");
  EXPECT_EQ(describe(quant_config({Kind::CtInt, 8, 0, true, false, ""})),
            "compressed-tensors int-quantized INT8, per-channel scales, symmetric");
}

// The integer fixtures tools/fixtures/gen_int_fixtures.py writes (tests/fixtures/models/*-awq,
// *-gptq*, *-ct{pack4,int8}): their weights, loaded and dequantized by the contract's definition,
// must give transformers' logits of the dequantized model. This checks the loader against an
// independent packer and transformers without the integer kernels; the model fixture test
// (model_fixture_test.cpp, ModelFixture.*) runs the same fixtures through the backends' kernels.
TEST(IntFixtures, DequantizedWeightsGiveTheReferenceLogits) {
  int found = 0;
  for (const std::string& name : test::model_fixture_names()) {
    const std::string dir = test::fixtures_dir() + "/models/" + name;
    const ModelConfig cfg = load_model_config(dir);
    if (!cfg.quant.integer()) continue;
    ++found;
    SCOPED_TRACE(name + ": " + cfg.quant.describe());
    ModelWeights w = bind_weights(std::make_shared<SafeTensors>(SafeTensors::open_dir(dir)), cfg);
    bool any_perm = false;
    for_each_projection(w, [&](const Linear& l) { any_perm = any_perm || l.scheme.in_perm; });
    EXPECT_EQ(any_perm, cfg.quant.act_order);
    test::dequantize_int_projections(w);
    Transformer m(cfg, std::move(w));
    const json ref = test::read_json(dir + "/reference.json");
    const auto ids = ref["prompt_ids"].get<std::vector<int32_t>>();
    const std::vector<float> logits = test::all_logits(m, ids);
    const size_t V = size_t(cfg.vocab_size);
    ASSERT_EQ(logits.size(), ids.size() * V);
    const auto last = ref["last_logits"].get<std::vector<float>>();
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < V; ++i) {
      max_diff = std::max(max_diff, std::fabs(double(logits[(ids.size() - 1) * V + i]) - last[i]));
      max_ref = std::max(max_ref, std::fabs(double(last[i])));
    }
    EXPECT_LE(max_diff / max_ref, 1e-5) << "max|diff| " << max_diff << " max|ref| " << max_ref;
    const auto am = ref["argmax"].get<std::vector<int32_t>>();
    const auto margin = ref["argmax_margin"].get<std::vector<double>>();
    int wrong = 0;
    for (size_t p = 0; p < ids.size(); ++p) {
      if (margin[p] < 1e-4 * max_ref) continue;
      const float* row = logits.data() + p * V;
      wrong += int32_t(std::max_element(row, row + V) - row) != am[p];
    }
    EXPECT_EQ(wrong, 0);
  }
  if (found == 0) GTEST_SKIP() << "no integer fixtures yet (tools/fixtures/gen_int_fixtures.py makes them)";
}

}  // namespace
