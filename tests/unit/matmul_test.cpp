// cpu::matmul against the double-precision reference, for every weight dtype on every SIMD
// path this CPU can run; and the thread pool behind it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_isa.h"
#include "kernels/ref/matmul_ref.h"
#include "model/int_quantize.h"

namespace gale {
namespace {

// Random weights of dtype t, stored as raw bytes; magnitudes spread over a few binades and
// never zero, so every product matters.
std::vector<uint8_t> random_weights(DType t, size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(0.05f, 2.0f);
  std::bernoulli_distribution neg(0.5);
  std::vector<uint8_t> out(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) {
    float v = mag(rng) * (neg(rng) ? -1.0f : 1.0f);
    switch (t) {
      case DType::F32: std::memcpy(&out[i * 4], &v, 4); break;
      case DType::F16: {
        uint16_t h = f32_to_f16(v);
        std::memcpy(&out[i * 2], &h, 2);
        break;
      }
      case DType::BF16: {
        uint16_t h = f32_to_bf16(v);
        std::memcpy(&out[i * 2], &h, 2);
        break;
      }
      case DType::F8_E4M3:
      case DType::F8_E5M2: {
        // Any code except NaN/inf, zero excluded: covers subnormals and the whole range.
        uint8_t b;
        do b = uint8_t(rng()); while (t == DType::F8_E4M3 ? (b & 0x7f) == 0x7f || (b & 0x7f) == 0
                                                            : (b & 0x7c) == 0x7c || (b & 0x7f) == 0);
        out[i] = b;
        break;
      }
      default: throw std::logic_error("unsupported dtype");
    }
  }
  return out;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) {
    do x = d(rng); while (x == 0.0f);
  }
  return v;
}

struct Case {
  int64_t M, K, N;
  int64_t ldx_pad = 0, ldy_pad = 0;
  bool bias = false, accumulate = false;
};

// Runs one case on the current ISA and returns the worst error, scaled by the size of the
// terms summed: |y - ref| / (Σ_k |x·w| + |bias| + |y_old|). An f32 sum of K terms is off by
// at most ~K·2^-24 of that; in practice far less.
double run_case(const Case& c, DType wdt, std::mt19937& rng) {
  const int64_t ldx = c.K + c.ldx_pad, ldy = c.N + c.ldy_pad;
  std::vector<float> x = random_floats(size_t(c.M * ldx), rng);
  std::vector<uint8_t> w = random_weights(wdt, size_t(c.N * c.K), rng);
  std::vector<float> bias = random_floats(size_t(c.N), rng);
  std::vector<float> y0 = random_floats(size_t(c.M * ldy), rng);
  std::vector<float> y = y0, yref = y0;
  const float* b = c.bias ? bias.data() : nullptr;
  cpu::matmul(x.data(), ldx, c.M, c.K, w.data(), wdt, c.N, b, y.data(), ldy, c.accumulate);
  ref::matmul(x.data(), ldx, c.M, c.K, w.data(), wdt, c.N, b, yref.data(), ldy, c.accumulate);
  double worst = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < ldy; ++n) {
      const size_t i = size_t(m * ldy + n);
      if (n >= c.N) {  // padding between rows must be left alone
        EXPECT_EQ(y[i], y0[i]) << "wrote padding at m=" << m << " n=" << n;
        continue;
      }
      double scale = 0;
      for (int64_t k = 0; k < c.K; ++k)
        scale += std::fabs(double(x[size_t(m * ldx + k)]) * load_as_f32(w.data(), wdt, size_t(n * c.K + k)));
      if (c.bias) scale += std::fabs(bias[size_t(n)]);
      if (c.accumulate) scale += std::fabs(y0[i]);
      double err = std::fabs(double(y[i]) - double(yref[i])) / std::max(scale, 1e-30);
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
    }
  }
  return worst;
}

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2};

class MatmulIsa : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { cpu::set_matmul_isa(GetParam()); }
  void TearDown() override { cpu::set_matmul_isa(cpu::matmul_isas_available().front()); }
};

TEST_P(MatmulIsa, ReportsChosenPath) { EXPECT_EQ(std::string(cpu::matmul_isa()), GetParam()); }

TEST_P(MatmulIsa, AwkwardSizesAllDtypes) {
  std::mt19937 rng(1234);
  for (DType wdt : kDtypes) {
    for (int64_t M : {1, 2, 3, 7, 33, 130}) {
      for (int64_t K : {1, 3, 17, 64, 1000}) {
        for (int64_t N : {1, 5, 31, 257}) {
          Case c{M, K, N};
          double err = run_case(c, wdt, rng);
          ASSERT_LE(err, 1e-6) << dtype_name(wdt) << " M=" << M << " K=" << K << " N=" << N;
        }
      }
    }
  }
}

TEST_P(MatmulIsa, StridesBiasAccumulate) {
  std::mt19937 rng(99);
  for (DType wdt : kDtypes) {
    for (int64_t M : {1, 4, 5, 40}) {
      for (bool bias : {false, true}) {
        for (bool acc : {false, true}) {
          Case c{M, 129, 37, /*ldx_pad=*/7, /*ldy_pad=*/3, bias, acc};
          double err = run_case(c, wdt, rng);
          ASSERT_LE(err, 1e-6) << dtype_name(wdt) << " M=" << M << " bias=" << bias << " acc=" << acc;
        }
      }
    }
  }
}

// Long K spans several K-blocks of the GEMM; the normalised error stays near f32 epsilon.
TEST_P(MatmulIsa, LongK) {
  std::mt19937 rng(7);
  for (int64_t M : {1, 70}) {
    Case c{M, 2500, 40, 0, 0, true, false};
    EXPECT_LE(run_case(c, DType::BF16, rng), 1e-6) << "M=" << M;
  }
}

// Scaled FP8 weights (per tensor, per channel, groups of 32 columns, 128 x 128 blocks) on the
// decode kernels (M <= 4, with and without the shared-x path of long K) and the GEMM: each
// weight is its dequantized f32 value, so the error bound is the unscaled paths'.
TEST_P(MatmulIsa, ScaledFp8Weights) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> sd(0.001f, 0.05f);
  struct Scheme {
    const char* name;
    int64_t rows, cols;  // 0: the whole dimension
  };
  for (const Scheme sc : {Scheme{"tensor", 0, 0}, Scheme{"channel", 1, 0}, Scheme{"group32", 1, 32},
                          Scheme{"block128", 128, 128}}) {
    for (DType wdt : {DType::F8_E4M3, DType::F8_E5M2}) {
      for (int64_t M : {1, 2, 4, 9, 70}) {
        for (int64_t K : {100, 256, 300, 5000, 4096}) {
          if (K >= 4096 && M > 4) continue;  // the long-K cases are about the decode paths
          const int64_t N = 133;
          const int64_t srows = sc.rows ? sc.rows : N, scols = sc.cols ? sc.cols : K;
          const int64_t sld = (K + scols - 1) / scols;
          std::vector<float> x = random_floats(size_t(M * K), rng), bias = random_floats(size_t(N), rng);
          std::vector<uint8_t> w = random_weights(wdt, size_t(N * K), rng);
          std::vector<float> s(size_t((N + srows - 1) / srows * sld));
          for (float& v : s) v = sd(rng);
          std::vector<float> y0 = random_floats(size_t(M * N), rng), y = y0, yref = y0;
          cpu::WeightScales ws{s.data(), srows, scols, sld};
          cpu::matmul(x.data(), K, M, K, w.data(), wdt, N, bias.data(), y.data(), N, true, ws);
          ref::matmul_scaled(x.data(), K, M, K, w.data(), wdt, N, s.data(), srows, scols, sld, bias.data(),
                             yref.data(), N, true);
          double worst = 0;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double mag = std::fabs(bias[size_t(n)]) + std::fabs(y0[size_t(m * N + n)]);
              for (int64_t k = 0; k < K; ++k)
                mag += std::fabs(double(x[size_t(m * K + k)]) * load_as_f32(w.data(), wdt, size_t(n * K + k)) *
                                 s[size_t((n / srows) * sld + k / scols)]);
              const size_t i = size_t(m * N + n);
              worst = std::max(worst, std::fabs(double(y[i]) - double(yref[i])) / mag);
            }
          EXPECT_LE(worst, 1e-6) << sc.name << " " << dtype_name(wdt) << " M=" << M << " K=" << K;
        }
      }
    }
  }
}

// A scale that is not applied, or applied to the wrong columns, is caught: two blocks of
// columns with scales 1 and 2 give exactly the known sums.
TEST_P(MatmulIsa, BlockScalesLandOnTheirColumns) {
  for (int64_t M : {1, 9}) {
    const int64_t K = 256, N = 3;
    std::vector<float> x(size_t(M * K), 1.0f), y(size_t(M * N));
    std::vector<uint8_t> w(size_t(N * K), 0x38);  // E4M3 1.0
    const float s[] = {1.0f, 2.0f};               // columns 0-127, 128-255 (one row block)
    cpu::matmul(x.data(), K, M, K, w.data(), DType::F8_E4M3, N, nullptr, y.data(), N, false,
                cpu::WeightScales{s, 128, 128, 2});
    for (float v : y) EXPECT_EQ(v, 128.0f + 256.0f);
  }
}

// Special weight values pass through: E4M3's NaN code, f16/E5M2 infinities (K = 128: the
// table-lookup E4M3 decode kernel of avx512bf16 too).
TEST_P(MatmulIsa, NonFiniteWeights) {
  for (int64_t M : {1, 9})
  for (int64_t K : {20, 128}) {
    const int64_t N = 3;
    std::vector<float> x(size_t(M * K), 0.5f), y(size_t(M * N));
    std::vector<uint8_t> e4(size_t(N * K), 0x38);  // 1.0
    e4[5] = 0x7f;                                   // NaN in row 0
    cpu::matmul(x.data(), K, M, K, e4.data(), DType::F8_E4M3, N, nullptr, y.data(), N);
    for (int64_t m = 0; m < M; ++m) {
      EXPECT_TRUE(std::isnan(y[size_t(m * N)]));
      EXPECT_FLOAT_EQ(y[size_t(m * N + 1)], 0.5f * float(K));
    }
    std::vector<uint8_t> e5(size_t(N * K), 0x3c);  // 1.0
    e5[K + 2] = 0x7c;                               // +inf in row 1
    cpu::matmul(x.data(), K, M, K, e5.data(), DType::F8_E5M2, N, nullptr, y.data(), N);
    for (int64_t m = 0; m < M; ++m) {
      EXPECT_FLOAT_EQ(y[size_t(m * N)], 0.5f * float(K));
      EXPECT_EQ(y[size_t(m * N + 1)], INFINITY);
    }
  }
}

// matmul_multi gives each target bitwise what matmul gives it: several weight dtypes in one
// call, decode and prefill row counts, two GEMM row blocks (M = 300), strides, bias,
// accumulate; and with any number of threads (the splits never change a sum).
TEST_P(MatmulIsa, MultiEqualsSeparateBitwise) {
  std::mt19937 rng(2024);
  struct T { DType dt; int64_t n; bool bias, acc; int64_t ldy_pad; };
  const std::vector<T> shapes = {{DType::BF16, 257, true, false, 3},
                                 {DType::F16, 31, false, true, 0},
                                 {DType::F32, 13, true, true, 5},
                                 {DType::F8_E4M3, 1, false, false, 0},
                                 {DType::BF16, 40, false, false, 0}};
  const int saved = num_threads();
  for (int64_t M : {1, 2, 3, 4, 5, 33, 130, 300}) {
    for (int64_t K : {17, 1000, 2500}) {
      if (M == 300 && K == 2500) continue;  // slow under the scalar path, nothing new
      const int64_t ldx = K + 2;
      std::vector<float> x = random_floats(size_t(M * ldx), rng);
      std::vector<std::vector<uint8_t>> w;
      std::vector<std::vector<float>> bias, y0, y_multi;
      std::vector<cpu::MatmulTarget> targets;
      for (const T& t : shapes) {
        w.push_back(random_weights(t.dt, size_t(t.n * K), rng));
        bias.push_back(random_floats(size_t(t.n), rng));
        y0.push_back(random_floats(size_t(M * (t.n + t.ldy_pad)), rng));
      }
      y_multi = y0;
      for (size_t i = 0; i < shapes.size(); ++i)
        targets.push_back({w[i].data(), shapes[i].dt, shapes[i].n, shapes[i].bias ? bias[i].data() : nullptr,
                           y_multi[i].data(), shapes[i].n + shapes[i].ldy_pad, shapes[i].acc});
      set_num_threads(3);
      cpu::matmul_multi(x.data(), ldx, M, K, targets);
      for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        for (size_t i = 0; i < shapes.size(); ++i) {
          std::vector<float> y = y0[i];
          const T& t = shapes[i];
          cpu::matmul(x.data(), ldx, M, K, w[i].data(), t.dt, t.n, t.bias ? bias[i].data() : nullptr, y.data(),
                      t.n + t.ldy_pad, t.acc);
          ASSERT_EQ(0, std::memcmp(y.data(), y_multi[i].data(), y.size() * 4))
              << "target " << i << " M=" << M << " K=" << K << " threads=" << threads;
        }
      }
    }
  }
  set_num_threads(saved);
}

// Integer weights (INT8 per channel / per group, INT4 per channel / per group with and without
// zero points) against ref::matmul_int, on the decode kernels (M <= 4) and the GEMM: random
// codes over the whole range, K with and without a tail past the SIMD blocks, groups of 32,
// 64 and 128 whose last one may be short. Each weight is its exact dequantized value, so the
// bound is the float paths'.
struct IntCase {
  int bits;
  int64_t group;  // 0: per channel
  bool zeros;
};

double run_int_case(const IntCase& ic, int64_t M, int64_t K, int64_t N, std::mt19937& rng, bool multi = false) {
  std::uniform_real_distribution<float> sd(0.001f, 0.05f);
  const int64_t spr = ic.group > 0 ? (K + ic.group - 1) / ic.group : 1;
  const int64_t row_bytes = ic.bits == 8 ? K : K / 2;
  std::vector<uint8_t> codes(size_t(N * row_bytes)), zero(size_t(N * spr));
  for (auto& b : codes) b = uint8_t(rng());
  for (auto& z : zero) z = uint8_t(rng() % 16);
  std::vector<float> s(size_t(N * spr));
  for (float& v : s) v = sd(rng);
  std::vector<float> x = random_floats(size_t(M * K), rng), bias = random_floats(size_t(N), rng);
  std::vector<float> y0 = random_floats(size_t(M * N), rng), y = y0, yref = y0;
  const uint8_t* zp = ic.zeros ? zero.data() : nullptr;
  cpu::WeightScales ws{s.data(), 1, ic.group > 0 ? ic.group : K, spr, zp, ic.bits == 4};
  const DType dt = ic.bits == 8 ? DType::I8 : DType::U8;
  if (multi) {  // one target among others: the union split must not change it
    std::vector<uint16_t> wb(size_t(5 * K), 0x3f80);
    std::vector<float> yb(size_t(M * 5));
    const cpu::MatmulTarget t[] = {{wb.data(), DType::BF16, 5, nullptr, yb.data(), 5, false, {}},
                                   {codes.data(), dt, N, bias.data(), y.data(), N, true, ws}};
    cpu::matmul_multi(x.data(), K, M, K, t);
  } else {
    cpu::matmul(x.data(), K, M, K, codes.data(), dt, N, bias.data(), y.data(), N, true, ws);
  }
  ref::matmul_int(x.data(), K, M, K, codes.data(), ic.bits, N, s.data(), zp, ic.group, nullptr, bias.data(),
                  yref.data(), N, true);
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = size_t(m * N + n);
      double mag = std::fabs(bias[size_t(n)]) + std::fabs(y0[i]);
      for (int64_t k = 0; k < K; ++k)
        mag += std::fabs(double(x[size_t(m * K + k)]) *
                         ref::int_weight_ref(codes.data(), ic.bits, K, s.data(), zp, ic.group, n, k));
      const double err = std::fabs(double(y[i]) - double(yref[i])) / mag;
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
    }
  return worst;
}

const IntCase kIntCases[] = {{8, 0, false},  {8, 32, false}, {8, 128, false}, {4, 0, false}, {4, 0, true},
                             {4, 32, true},  {4, 64, false}, {4, 128, true},  {4, 128, false}};

TEST_P(MatmulIsa, IntegerWeights) {
  std::mt19937 rng(18);
  for (const IntCase& ic : kIntCases)
    for (int64_t M : {1, 2, 3, 4, 5, 70})
      for (int64_t K : {2, 32, 98, 100, 256, 320, 4098}) {
        if (K >= 4096 && M > 4) continue;  // the long-K cases are about the decode paths
        if (ic.group > 0 && ic.group >= K) continue;  // that is per channel
        const double err = run_int_case(ic, M, K, 37, rng);
        EXPECT_LE(err, 1e-6) << "bits=" << ic.bits << " group=" << ic.group << " zeros=" << ic.zeros << " M=" << M
                             << " K=" << K;
      }
}

TEST_P(MatmulIsa, IntegerWeightsInMulti) {
  std::mt19937 rng(5);
  for (const IntCase& ic : {IntCase{8, 64, false}, IntCase{4, 128, true}})
    for (int64_t M : {1, 3, 33})
      EXPECT_LE(run_int_case(ic, M, 1280, 19, rng, true), 1e-6) << "bits=" << ic.bits << " M=" << M;
}

// The W8A8 / W4A8 decode option (cpu::set_matmul_int_a8; the avx512bf16 path has it, the
// others stay exact): x is rounded to int8 steps of at most max|x row| / 127, so each product
// moves by at most |w| · max|x| / 254; the rest of the error is the f32 sums'. Shapes it does
// not take (K = 98, groups of 32) fall back to the exact kernel.
TEST_P(MatmulIsa, IntegerWeightsA8) {
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> sd(0.001f, 0.05f);
  cpu::set_matmul_int_a8(true);
  for (const IntCase& ic : kIntCases)
    for (int64_t M : {1, 2, 4})
      for (int64_t K : {98, 256, 320, 2048}) {
        if (ic.group >= K) continue;
        const int64_t N = 45, spr = ic.group > 0 ? (K + ic.group - 1) / ic.group : 1;
        std::vector<uint8_t> codes(size_t(ic.bits == 8 ? N * K : N * K / 2)), zero(size_t(N * spr));
        for (auto& b : codes) b = uint8_t(rng());
        for (auto& z : zero) z = uint8_t(rng() % 16);
        std::vector<float> s(size_t(N * spr));
        for (float& v : s) v = sd(rng);
        std::vector<float> x = random_floats(size_t(M * K), rng), y(size_t(M * N)), yref(size_t(M * N));
        x[size_t(K / 3)] = 8.0f;  // an outlier: its block's step is 16x the others'
        const uint8_t* zp = ic.zeros ? zero.data() : nullptr;
        const cpu::WeightScales ws{s.data(), 1, ic.group > 0 ? ic.group : K, spr, zp, ic.bits == 4};
        cpu::matmul(x.data(), K, M, K, codes.data(), ic.bits == 8 ? DType::I8 : DType::U8, N, nullptr, y.data(), N,
                    false, ws);
        ref::matmul_int(x.data(), K, M, K, codes.data(), ic.bits, N, s.data(), zp, ic.group, nullptr, nullptr,
                        yref.data(), N);
        for (int64_t m = 0; m < M; ++m) {
          float amax = 0;
          for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[size_t(m * K + k)]));
          for (int64_t n = 0; n < N; ++n) {
            double wsum = 0, mag = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double w = ref::int_weight_ref(codes.data(), ic.bits, K, s.data(), zp, ic.group, n, k);
              wsum += std::fabs(w);
              mag += std::fabs(w * x[size_t(m * K + k)]);
            }
            const double bound = wsum * amax / 254.0 * 1.001 + 1e-5 * mag;
            ASSERT_LE(std::fabs(double(y[size_t(m * N + n)]) - yref[size_t(m * N + n)]), bound)
                << "bits=" << ic.bits << " group=" << ic.group << " zeros=" << ic.zeros << " M=" << M << " K=" << K;
          }
        }
      }
  cpu::set_matmul_int_a8(false);
}

// The reference's weights are the contract's: ref::int_weight_ref equals model/int_quantize.h's
// int_weight bitwise on what quantize_int writes, for every scheme.
TEST(MatmulIntRef, WeightsAreIntWeight) {
  std::mt19937 rng(3);
  const int64_t rows = 5, cols = 200;
  std::vector<float> w = random_floats(size_t(rows * cols), rng);
  for (const IntCase& ic : kIntCases) {
    IntQuantSpec q{ic.bits, ic.group, !ic.zeros};
    if (ic.bits == 8 && ic.zeros) continue;
    std::vector<uint8_t> codes(size_t(rows * int_code_bytes_per_row(q, cols)));
    std::vector<float> s(size_t(rows * int_scales_per_row(q, cols)));
    std::vector<uint8_t> z(s.size());
    quantize_int(w.data(), DType::F32, rows, cols, cols, q, nullptr, codes.data(), s.data(), z.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float a = int_weight(codes.data(), s.data(), z.data(), q, cols, r, c);
        const float b = ref::int_weight_ref(codes.data(), ic.bits, cols, s.data(), ic.zeros ? z.data() : nullptr,
                                            ic.group, r, c);
        ASSERT_EQ(a, b) << "bits=" << ic.bits << " group=" << ic.group << " r=" << r << " c=" << c;
      }
  }
}

// A scale or zero point on the wrong columns is caught with exact sums: codes all 9 (INT4) or
// 1 (INT8), x all 1, two groups of 32 with scales 1 and 2, zero points 8 and 7.
TEST_P(MatmulIsa, IntegerGroupsLandOnTheirColumns) {
  for (int64_t M : {1, 9}) {
    const int64_t K = 64, N = 3;
    std::vector<float> x(size_t(M * K), 1.0f), y(size_t(M * N));
    const float s[] = {1.0f, 2.0f, 1.0f, 2.0f, 1.0f, 2.0f};
    const uint8_t z[] = {8, 7, 8, 7, 8, 7};
    std::vector<uint8_t> u4(size_t(N * K / 2), 0x99);
    cpu::matmul(x.data(), K, M, K, u4.data(), DType::U8, N, nullptr, y.data(), N, false,
                cpu::WeightScales{s, 1, 32, 2, z, true});
    for (float v : y) EXPECT_EQ(v, 32.0f * 1 + 32.0f * 2 * 2);
    std::vector<uint8_t> i8(size_t(N * K), 1);
    cpu::matmul(x.data(), K, M, K, i8.data(), DType::I8, N, nullptr, y.data(), N, false,
                cpu::WeightScales{s, 1, 32, 2});
    for (float v : y) EXPECT_EQ(v, 32.0f + 64.0f);
  }
}

TEST(MatmulMulti, EmptyTargetsAndZeroK) {
  std::vector<float> x(12, 1.0f), bias = {1.0f, 2.0f}, y(6, 5.0f);
  cpu::matmul_multi(x.data(), 4, 3, 4, {});  // nothing to do
  std::vector<uint16_t> w(2, 0);
  const cpu::MatmulTarget t[] = {{w.data(), DType::BF16, 0, nullptr, nullptr, 0, false},
                                 {w.data(), DType::BF16, 2, bias.data(), y.data(), 2, true}};
  cpu::matmul_multi(x.data(), 4, 3, 0, t);  // K = 0: y += bias
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ(y[size_t(m * 2)], 6.0f);
    EXPECT_EQ(y[size_t(m * 2 + 1)], 7.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(AllPaths, MatmulIsa, ::testing::ValuesIn(cpu::matmul_isas_available()),
                         [](const auto& info) { return info.param; });

TEST(MatmulIsaSelection, UnknownOrUnsupportedNameThrows) {
  EXPECT_THROW(cpu::set_matmul_isa("neon9000"), std::exception);
  EXPECT_EQ(cpu::matmul_isas_available().back(), "scalar");
}

// ---- thread pool --------------------------------------------------------------------------

TEST(ThreadPool, EveryIndexVisitedOnce) {
  for (int64_t n : {1, 2, 3, 7, 100, 1001}) {
    for (int64_t min_chunk : {1, 4, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> max_thread{-1};
      parallel_for(n, [&](int64_t b, int64_t e, int t) {
        EXPECT_LT(b, e);
        for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
        int prev = max_thread.load();
        while (t > prev && !max_thread.compare_exchange_weak(prev, t)) {}
      }, min_chunk);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "n=" << n << " i=" << i;
      EXPECT_LT(max_thread.load(), num_threads());
      EXPECT_LT(max_thread.load(), std::max<int64_t>(1, n / min_chunk));
    }
  }
}

TEST(ThreadPool, EmptyRangeCallsNothing) {
  bool called = false;
  parallel_for(0, [&](int64_t, int64_t, int) { called = true; });
  parallel_for(-3, [&](int64_t, int64_t, int) { called = true; });
  EXPECT_FALSE(called);
}

TEST(ThreadPool, MoreThreadsThanWork) {
  int saved = num_threads();
  set_num_threads(8);
  std::vector<std::atomic<int>> hits(3);
  std::atomic<int> calls{0};
  parallel_for(3, [&](int64_t b, int64_t e, int) {
    calls.fetch_add(1);
    for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
  });
  EXPECT_EQ(calls.load(), 3);
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  set_num_threads(saved);
}

// Many back-to-back small calls, as in a decode step: exercises the spin/sleep hand-over.
TEST(ThreadPool, ManyRapidCalls) {
  int saved = num_threads();
  set_num_threads(4);
  std::atomic<int64_t> total{0};
  for (int rep = 0; rep < 20000; ++rep)
    parallel_for(16, [&](int64_t b, int64_t e, int) { total.fetch_add(e - b); });
  EXPECT_EQ(total.load(), 16 * 20000);
  set_num_threads(saved);
}

TEST(ThreadPool, ExceptionReachesCaller) {
  int saved = num_threads();
  set_num_threads(4);
  EXPECT_THROW(parallel_for(8, [&](int64_t b, int64_t, int) {
                 if (b >= 4) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  // Still usable afterwards.
  std::atomic<int64_t> total{0};
  parallel_for(8, [&](int64_t b, int64_t e, int) { total.fetch_add(e - b); });
  EXPECT_EQ(total.load(), 8);
  set_num_threads(saved);
}

}  // namespace
}  // namespace gale
