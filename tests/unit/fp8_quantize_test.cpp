// The one FP8 quantizer (model/fp8_quantize.h) against its rule written out plainly, on sizes
// that leave partial blocks and a strided source; and the --keep-16bit name patterns
// (loader/name_patterns.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "loader/name_patterns.h"
#include "model/fp8_quantize.h"

using namespace gale;

namespace {

// The quantizer against the rule written out plainly, on sizes that leave partial blocks.
TEST(Fp8Quantize, ScalesAndCodesFollowTheRule) {
  const int64_t rows = 131, cols = 200, ld = 203, block = 128;
  std::vector<uint16_t> src(size_t(rows * ld));
  for (size_t i = 0; i < src.size(); ++i) src[i] = f32_to_bf16(std::sin(float(i) * 0.37f) * float(1 + i % 17));
  src[5] = f32_to_bf16(0.0f);
  for (int64_t c = 0; c < cols; ++c) src[size_t(7 * ld + c)] = 0;  // an all-zero row: scale 1
  for (Fp8Granularity g : {Fp8Granularity::Tensor, Fp8Granularity::Channel, Fp8Granularity::Block}) {
    const int64_t n = fp8_scale_count(g, rows, cols, block);
    std::vector<float> s(static_cast<size_t>(n));
    std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
    quantize_fp8(src.data(), DType::BF16, rows, cols, ld, g, block, codes.data(), s.data());
    // Which scale covers (r, c): the formula of each granularity.
    auto cell = [&](int64_t r, int64_t c) -> int64_t {
      if (g == Fp8Granularity::Tensor) return 0;
      if (g == Fp8Granularity::Channel) return r;
      return r / block * ((cols + block - 1) / block) + c / block;
    };
    std::vector<float> amax(size_t(n), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float& a = amax[size_t(cell(r, c))];
        a = std::max(a, std::fabs(bf16_to_f32(src[size_t(r * ld + c)])));
      }
    for (int64_t i = 0; i < n; ++i)
      EXPECT_EQ(s[size_t(i)], amax[size_t(i)] > 0 ? amax[size_t(i)] / 448.0f : 1.0f) << int(g) << " scale " << i;
    if (g == Fp8Granularity::Channel) {
      EXPECT_EQ(s[7], 1.0f);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float want = bf16_to_f32(src[size_t(r * ld + c)]) / s[size_t(cell(r, c))];
        ASSERT_EQ(codes[size_t(r * cols + c)], f32_to_f8e4m3(want)) << int(g) << " at " << r << ", " << c;
      }
  }
}

TEST(NamePatterns, GlobsOverModuleOrTensorAndAnchoredRegexes) {
  const NamePatterns p({"model.layers.0.*", "*.o_proj", "lm_head.weight", "re:.*mlp\\.(up|gate)_proj$"});
  EXPECT_TRUE(p.matches("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(p.matches("model.layers.10.self_attn.q_proj.weight"));
  EXPECT_TRUE(p.matches("model.layers.3.self_attn.o_proj.weight"));
  EXPECT_TRUE(p.matches("lm_head.weight"));
  EXPECT_TRUE(p.matches("model.layers.5.mlp.up_proj.weight"));
  EXPECT_FALSE(p.matches("model.layers.5.mlp.down_proj.weight"));
  EXPECT_EQ(p.match_index("model.layers.5.mlp.gate_proj.weight"), 3);
  // A regex is anchored at the start only (Python's re.match, as compressed-tensors' ignore).
  EXPECT_TRUE(NamePatterns({"re:model\\.layers\\.1"}).matches("model.layers.12.mlp.up_proj.weight"));
  EXPECT_FALSE(NamePatterns({"re:layers"}).matches("model.layers.1.mlp.up_proj.weight"));
  EXPECT_TRUE(glob_match("a*b?d", "axxxbcd"));
  EXPECT_FALSE(glob_match("a*b?d", "axxxbd"));
  EXPECT_TRUE(glob_match("**", ""));
  EXPECT_THROW(NamePatterns({""}), Error);
  EXPECT_THROW(NamePatterns({"re:(("}), Error);
}

}  // namespace
