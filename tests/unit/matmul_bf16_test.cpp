// cpu::matmul_multi_bf16 (the `--dtype bf16` products: x rounded to bf16, f32 sums) against
// ref::matmul_bf16x on every path this CPU can run (AMX, vdpbf16ps, exact), and the reference's
// bf16 rounding against core's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul_bf16.h"
#include "kernels/ref/matmul_ref.h"

namespace gale {
namespace {

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do x = d(rng); while (x == 0.0f);
  }
  return v;
}

// Weights of dtype t (BF16, or F16 / F32 for the exact route), never zero.
std::vector<uint8_t> random_weights(DType t, size_t n, std::mt19937& rng) {
  std::vector<float> f = random_floats(n, rng, -2.0f, 2.0f);
  std::vector<uint8_t> out(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::F32) {
      std::memcpy(&out[i * 4], &f[i], 4);
    } else {
      const uint16_t h = t == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

struct Target {
  DType dtype;
  int64_t n;
  bool bias, accumulate;
};

struct Problem {
  int64_t M, K;
  int64_t ldx_pad = 0, ldy_pad = 0;
  std::vector<Target> targets;
};

struct Data {
  std::vector<float> x;
  std::vector<std::vector<uint8_t>> w;
  std::vector<std::vector<float>> bias, y0;
};

Data make_data(const Problem& p, std::mt19937& rng) {
  Data d;
  d.x = random_floats(size_t(p.M * (p.K + p.ldx_pad)), rng);
  for (const Target& t : p.targets) {
    d.w.push_back(random_weights(t.dtype, size_t(t.n * p.K), rng));
    d.bias.push_back(random_floats(size_t(t.n), rng));
    d.y0.push_back(random_floats(size_t(p.M * (t.n + p.ldy_pad)), rng));
  }
  return d;
}

// Runs matmul_multi_bf16 on the current path; returns each target's y.
std::vector<std::vector<float>> run(const Problem& p, const Data& d) {
  std::vector<std::vector<float>> ys = d.y0;
  std::vector<cpu::MatmulTarget> ts;
  for (size_t i = 0; i < p.targets.size(); ++i) {
    const Target& t = p.targets[i];
    ts.push_back({d.w[i].data(), t.dtype, t.n, t.bias ? d.bias[i].data() : nullptr, ys[i].data(), t.n + p.ldy_pad,
                  t.accumulate});
  }
  cpu::matmul_multi_bf16(d.x.data(), p.K + p.ldx_pad, p.M, p.K, ts);
  return ys;
}

// Worst error over all targets against the reference, scaled by the size of the terms summed:
// |y - ref| / (Σ_k |bf16(x)·w| + |bias| + |y_old|). Any f32 summation order of K terms stays
// within ~K·2^-24 of that, usually far below. Padding between y rows must be left alone.
double worst_error(const Problem& p, const Data& d, const std::vector<std::vector<float>>& ys) {
  const int64_t ldx = p.K + p.ldx_pad;
  double worst = 0;
  for (size_t ti = 0; ti < p.targets.size(); ++ti) {
    const Target& t = p.targets[ti];
    const int64_t ldy = t.n + p.ldy_pad;
    std::vector<float> yref = d.y0[ti];
    ref::matmul_bf16x(d.x.data(), ldx, p.M, p.K, d.w[ti].data(), t.dtype, t.n, t.bias ? d.bias[ti].data() : nullptr,
                      yref.data(), ldy, t.accumulate);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < ldy; ++n) {
        const size_t i = size_t(m * ldy + n);
        if (n >= t.n) {
          EXPECT_EQ(ys[ti][i], d.y0[ti][i]) << "wrote padding at m=" << m << " n=" << n;
          continue;
        }
        double scale = 0;
        for (int64_t k = 0; k < p.K; ++k)
          scale += std::fabs(double(ref::round_bf16(d.x[size_t(m * ldx + k)])) *
                             load_as_f32(d.w[ti].data(), t.dtype, size_t(n * p.K + k)));
        if (t.bias) scale += std::fabs(d.bias[ti][size_t(n)]);
        if (t.accumulate) scale += std::fabs(d.y0[ti][i]);
        const double err = std::fabs(double(ys[ti][i]) - double(yref[i])) / std::max(scale, 1e-30);
        if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
      }
  }
  return worst;
}

constexpr double kTolerance = 1e-5;

class MatmulBf16Path : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    previous_ = cpu::matmul_bf16_path();
    cpu::set_matmul_bf16_path(GetParam());
  }
  void TearDown() override { cpu::set_matmul_bf16_path(previous_); }
  std::string previous_;
};

TEST_P(MatmulBf16Path, ReportsChosenPath) { EXPECT_EQ(std::string(cpu::matmul_bf16_path()), GetParam()); }

// Prefill sizes around the kernels' blocks (16-row x groups, 32-row pairs and W blocks, 32-column
// chunks) and the decode sizes, which take the exact route on every path.
TEST_P(MatmulBf16Path, AwkwardSizes) {
  std::mt19937 rng(1234);
  for (int64_t M : {1, 4, 5, 16, 17, 33, 64, 130}) {
    for (int64_t K : {1, 2, 31, 32, 67, 256}) {
      for (int64_t N : {1, 31, 32, 33, 100}) {
        Problem p{M, K, 0, 0, {{DType::BF16, N, false, false}}};
        const Data d = make_data(p, rng);
        ASSERT_LE(worst_error(p, d, run(p, d)), kTolerance) << "M=" << M << " K=" << K << " N=" << N;
      }
    }
  }
}

TEST_P(MatmulBf16Path, StridesBiasAccumulate) {
  std::mt19937 rng(99);
  for (int64_t M : {3, 40}) {
    for (bool bias : {false, true}) {
      for (bool acc : {false, true}) {
        Problem p{M, 129, 7, 3, {{DType::BF16, 37, bias, acc}}};
        const Data d = make_data(p, rng);
        ASSERT_LE(worst_error(p, d, run(p, d)), kTolerance) << "M=" << M << " bias=" << bias << " acc=" << acc;
      }
    }
  }
}

// Several targets sharing x, as q/k/v: one with no rows, one that is not BF16 (the whole call then
// takes the exact route), and long K over more than one x block (K = 4096: 128-row blocks).
TEST_P(MatmulBf16Path, MultipleTargetsAndLongK) {
  std::mt19937 rng(5);
  const std::vector<Problem> ps = {
      {70, 96, 0, 0, {{DType::BF16, 64, true, false}, {DType::BF16, 0, false, false}, {DType::BF16, 40, false, true}}},
      {70, 96, 0, 0, {{DType::BF16, 64, true, false}, {DType::F16, 33, false, false}, {DType::F32, 8, true, true}}},
      {300, 4096, 0, 0, {{DType::BF16, 48, true, false}}},
  };
  for (const Problem& p : ps) {
    const Data d = make_data(p, rng);
    EXPECT_LE(worst_error(p, d, run(p, d)), kTolerance) << "M=" << p.M << " K=" << p.K;
  }
}

// Each target's y is bitwise what it gets alone (linear_fused equals linear), and the thread
// count does not change the result.
TEST_P(MatmulBf16Path, MultiEqualsSingleAndThreadCountInvariant) {
  std::mt19937 rng(11);
  Problem p{90, 200, 0, 0, {{DType::BF16, 100, true, false}, {DType::BF16, 70, false, true}}};
  const Data d = make_data(p, rng);
  const int threads = num_threads();
  set_num_threads(2);
  const auto both = run(p, d);
  set_num_threads(1);
  const auto one_thread = run(p, d);
  set_num_threads(threads);
  for (size_t i = 0; i < p.targets.size(); ++i) {
    Problem single{p.M, p.K, 0, 0, {p.targets[i]}};
    Data ds{d.x, {d.w[i]}, {d.bias[i]}, {d.y0[i]}};
    const auto alone = run(single, ds);
    EXPECT_EQ(0, std::memcmp(alone[0].data(), both[i].data(), both[i].size() * 4)) << "target " << i;
    EXPECT_EQ(0, std::memcmp(one_thread[i].data(), both[i].data(), both[i].size() * 4)) << "target " << i;
  }
}

// The products are those of x rounded to bf16, not of x: with x far from bf16 values the exact
// f32 reference is outside the tolerance (so these tests can tell the two apart) while the bf16
// reference is within it.
TEST_P(MatmulBf16Path, RoundsXToBf16) {
  std::mt19937 rng(3);
  Problem p{40, 64, 0, 0, {{DType::BF16, 48, false, false}}};
  const Data d = make_data(p, rng);
  const auto ys = run(p, d);
  EXPECT_LE(worst_error(p, d, ys), kTolerance);
  std::vector<float> yf32(size_t(p.M * 48));
  ref::matmul(d.x.data(), p.K, p.M, p.K, d.w[0].data(), DType::BF16, 48, nullptr, yf32.data(), 48);
  double far = 0;
  for (size_t i = 0; i < yf32.size(); ++i)
    far = std::max(far, double(std::fabs(yf32[i] - ys[0][i])) / (std::fabs(yf32[i]) + 1.0));
  EXPECT_GT(far, 100 * kTolerance);
}

// A NaN in x reaches every output of its row and no other row; infinities give infinities.
TEST_P(MatmulBf16Path, NanAndInfinity) {
  std::mt19937 rng(8);
  Problem p{20, 64, 0, 0, {{DType::BF16, 40, false, false}}};
  Data d = make_data(p, rng);
  d.x[size_t(3 * 64 + 10)] = std::numeric_limits<float>::quiet_NaN();
  d.x[size_t(7 * 64 + 5)] = std::numeric_limits<float>::infinity();
  const auto ys = run(p, d);
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t n = 0; n < 40; ++n) {
      const float v = ys[0][size_t(m * 40 + n)];
      if (m == 3) EXPECT_TRUE(std::isnan(v)) << n;
      else if (m == 7) EXPECT_TRUE(std::isinf(v)) << n;
      else EXPECT_TRUE(std::isfinite(v)) << m << " " << n;
    }
}

INSTANTIATE_TEST_SUITE_P(AllPaths, MatmulBf16Path, ::testing::ValuesIn(cpu::matmul_bf16_paths_available()),
                         [](const auto& info) { return info.param; });

TEST(MatmulBf16, UnknownPathIsAnError) {
  EXPECT_THROW(cpu::set_matmul_bf16_path("avx9000"), Error);
  const auto paths = cpu::matmul_bf16_paths_available();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.back(), "exact");
}

// AMX when this machine has it, otherwise exact (unless GALE_BF16_GEMM says otherwise).
TEST(MatmulBf16, DefaultPath) {
  if (std::getenv("GALE_BF16_GEMM")) GTEST_SKIP() << "GALE_BF16_GEMM is set";
  const auto paths = cpu::matmul_bf16_paths_available();
  const bool amx = std::find(paths.begin(), paths.end(), "amx") != paths.end();
  EXPECT_EQ(std::string(cpu::matmul_bf16_path()), amx ? "amx" : "exact");
}

// The reference's rounding (from the definition: nearest neighbour, ties to even) against core's
// bit trick, over random bit patterns, exact ties, and the overflow threshold.
TEST(MatmulBf16, ReferenceRoundingMatchesCore) {
  std::mt19937 rng(21);
  auto check = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    const float r = ref::round_bf16(f), c = bf16_to_f32(f32_to_bf16(f));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(r) && std::isnan(c));
      return;
    }
    EXPECT_EQ(0, std::memcmp(&r, &c, 4)) << std::hex << bits;
  };
  for (int i = 0; i < 200000; ++i) check(uint32_t(rng()));
  for (uint32_t hi : {0x3f80u, 0x3f81u, 0x0001u, 0x8001u, 0x7f7eu, 0x7f7fu, 0xff7fu})
    for (uint32_t lo : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) check(hi << 16 | lo);
}

}  // namespace
}  // namespace gale
