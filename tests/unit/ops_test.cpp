// The CPU element-wise and attention kernels (kernels/cpu/ops.h) called directly: each against
// its scalar reference (kernels/ref), with strided rows, untouched padding and in-place calls,
// and bitwise the same whatever the number of threads (the threads split rows, heads or
// tokens; no sum is ever split). tests/unit/backend_ops_test.cpp runs the same ops through
// every Backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/activation_ref.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/norm_ref.h"
#include "kernels/ref/rope_ref.h"

namespace gale {
namespace {

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Runs fn (which fills its output from scratch) with 1 thread and with 2, 3 and 5, and
// expects the same bytes every time; returns the 1-thread output.
std::vector<float> same_for_all_thread_counts(const std::function<std::vector<float>()>& fn) {
  const int saved = num_threads();
  set_num_threads(1);
  std::vector<float> one = fn();
  for (int t : {2, 3, 5}) {
    set_num_threads(t);
    std::vector<float> many = fn();
    EXPECT_EQ(one.size(), many.size());
    EXPECT_EQ(0, std::memcmp(one.data(), many.data(), one.size() * 4)) << "threads=" << t;
  }
  set_num_threads(saved);
  return one;
}

TEST(CpuOps, RmsNorm) {
  std::mt19937 rng(1);
  // Small (one thread) and large (pool) row counts; strided input and output; in place.
  for (int64_t n : {1, 3, 64, 200}) {
    for (int64_t d : {7, 64, 2048}) {
      const int64_t ldx = d + 3, ldo = d + 5;
      std::vector<float> x = random_floats(size_t(n * ldx), rng), w = random_floats(size_t(d), rng);
      std::vector<float> out = same_for_all_thread_counts([&] {
        std::vector<float> o(size_t(n * ldo), 9.0f);
        cpu::rmsnorm(x.data(), ldx, n, d, w.data(), 1e-5f, o.data(), ldo);
        return o;
      });
      std::vector<float> want(size_t(n * ldo), 9.0f);
      ref::rmsnorm(x.data(), ldx, n, d, w.data(), 1e-5f, want.data(), ldo);
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t i = 0; i < d; ++i)
          ASSERT_NEAR(out[size_t(r * ldo + i)], want[size_t(r * ldo + i)], 1e-5) << "n=" << n << " d=" << d;
        for (int64_t i = d; i < ldo; ++i) ASSERT_EQ(out[size_t(r * ldo + i)], 9.0f);  // padding untouched
      }
      // In place gives the same values.
      std::vector<float> xi = x;
      cpu::rmsnorm(xi.data(), ldx, n, d, w.data(), 1e-5f, xi.data(), ldx);
      for (int64_t r = 0; r < n; ++r)
        ASSERT_EQ(0, std::memcmp(&xi[size_t(r * ldx)], &out[size_t(r * ldo)], size_t(d) * 4));
    }
  }
}

TEST(CpuOps, Rope) {
  std::mt19937 rng(2);
  for (int64_t n_tokens : {1, 5, 128}) {
    for (int64_t rot_dim : {64, 32}) {  // full and partial rotary
      const int64_t n_heads = 8, head_dim = 64, ld = n_heads * head_dim + 4, half = rot_dim / 2;
      std::vector<float> x = random_floats(size_t(n_tokens * ld), rng);
      std::vector<float> cs(size_t(n_tokens * half)), sn(size_t(n_tokens * half));
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t i = 0; i < half; ++i) {
          double a = double(t) * std::pow(10000.0, -2.0 * double(i) / double(rot_dim));
          cs[size_t(t * half + i)] = float(std::cos(a));
          sn[size_t(t * half + i)] = float(std::sin(a));
        }
      std::vector<float> out = same_for_all_thread_counts([&] {
        std::vector<float> v = x;
        cpu::rope_apply(v.data(), ld, n_tokens, n_heads, head_dim, rot_dim, cs.data(), sn.data());
        return v;
      });
      std::vector<float> want = x;
      ref::rope_rotate(want.data(), ld, n_tokens, n_heads, head_dim, rot_dim, cs.data(), sn.data());
      for (int64_t t = 0; t < n_tokens; ++t)
        for (int64_t i = 0; i < ld; ++i)  // the unrotated tail and the row padding untouched
          ASSERT_NEAR(out[size_t(t * ld + i)], want[size_t(t * ld + i)], 1e-6) << "t=" << t << " i=" << i;
    }
  }
}

TEST(CpuOps, SiluMulAndRoundToBf16) {
  std::mt19937 rng(3);
  for (int64_t n : {1, 9, 64}) {
    const int64_t d = 2050, ldg = d + 1, ldu = d + 3;
    std::vector<float> g = random_floats(size_t(n * ldg), rng, -8, 8), u = random_floats(size_t(n * ldu), rng);
    std::vector<float> out = same_for_all_thread_counts([&] {
      std::vector<float> v = g;
      cpu::silu_mul(v.data(), ldg, u.data(), ldu, n, d);
      return v;
    });
    std::vector<float> want = g;
    ref::silu_mul(g.data(), ldg, u.data(), ldu, n, d, want.data(), ldg);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < d; ++i) ASSERT_NEAR(out[size_t(r * ldg + i)], want[size_t(r * ldg + i)], 1e-5);
    std::vector<float> rounded = same_for_all_thread_counts([&] {
      std::vector<float> v = g;
      cpu::round_to_bf16(v.data(), int64_t(v.size()));
      return v;
    });
    for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(rounded[i], bf16_to_f32(f32_to_bf16(g[i])));
  }
}

// Attention of a prompt's tokens over a paged cache with a scrambled block table, GQA,
// f32, bf16 and E4M3 caches, with and without a sliding window. An E4M3 cache must hold the
// reference's bytes exactly (the same f32 division and rounding). {40, 9} is a prefill chunk
// whose window starts past position 0 (the kernel widens a 16-bit or E4M3 cache from there).
TEST(CpuOps, PagedAttention) {
  std::mt19937 rng(4);
  const int64_t n_heads = 8, n_kv = 2, hd = 64, bs = 16, qd = n_heads * hd, kvd = n_kv * hd;
  // E4M3 scales that put K (|x| < 1) low in the format's range and V at its top, the largest
  // values saturating at 448.
  const float k_scale = 8.0f / 448.0f, v_scale = 0.9f / 448.0f;
  for (DType dt : {DType::F32, DType::BF16, DType::F8_E4M3}) {
    for (int64_t window : {int64_t(0), int64_t(20)}) {
      for (auto [start, n_tokens] : {std::pair<int64_t, int64_t>{0, 70}, {37, 1}, {10, 33}, {40, 9}}) {
        const int64_t ctx = start + n_tokens, num_blocks = (ctx + bs - 1) / bs + 2;
        std::vector<int32_t> table;
        for (int64_t b = 0; b < num_blocks; ++b) table.push_back(int32_t(num_blocks - 1 - b));  // reversed: not the identity
        std::vector<float> k = random_floats(size_t(ctx * kvd), rng), v = random_floats(size_t(ctx * kvd), rng);
        std::vector<float> q = random_floats(size_t(n_tokens * qd), rng);
        std::vector<uint8_t> kc(size_t(num_blocks * bs * kvd) * dtype_size(dt)), vc(kc.size());
        const cpu::PagedKV pkv{kc.data(), vc.data(), dt, bs, n_kv, hd, k_scale, v_scale};
        cpu::paged_kv_write(k.data(), kvd, v.data(), kvd, ctx, 0, pkv, table);
        const float scale = 0.125f;
        std::vector<float> out = same_for_all_thread_counts([&] {
          std::vector<float> o(size_t(n_tokens * qd), 7.0f);
          cpu::paged_attention(q.data(), qd, n_tokens, n_heads, start, pkv, table, window, scale, o.data(), qd);
          return o;
        });
        // The reference reads its own cache, written by ref::paged_kv_write (bf16 rounded as stored).
        std::vector<uint8_t> rk(kc.size()), rv(kc.size());
        const ref::PagedCache rc{rk.data(), rv.data(), dt, bs, n_kv, hd, k_scale, v_scale};
        ref::paged_kv_write(k.data(), kvd, v.data(), kvd, ctx, 0, rc, table);
        if (dt == DType::F8_E4M3) {
          ASSERT_EQ(kc, rk);
          ASSERT_EQ(vc, rv);
        }
        std::vector<float> want(size_t(n_tokens * qd));
        ref::paged_attention(q.data(), qd, n_tokens, n_heads, start, rc, table, window, scale, want.data(), qd);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_NEAR(out[i], want[i], 1e-5) << dtype_name(dt) << " window=" << window << " token " << i / size_t(qd)
                                             << " head " << i % size_t(qd) / size_t(hd);
      }
    }
  }
}

}  // namespace
}  // namespace gale

// The CPU backend's greedy choice: the first of equal maxima, as torch.argmax.
TEST(CpuOps, ArgmaxTakesTheFirstMaximum) {
  const std::vector<float> v = {-3.0f, 2.5f, -1.0f, 2.5f, 0.0f};
  EXPECT_EQ(gale::cpu::argmax(v.data(), int64_t(v.size())), 1);
  EXPECT_EQ(gale::cpu::argmax(v.data() + 2, 3), 1);  // 2.5 at offset 1 of the tail
  const std::vector<float> neg = {-5.0f, -4.0f, -4.5f};
  EXPECT_EQ(gale::cpu::argmax(neg.data(), 3), 1);
  EXPECT_EQ(gale::cpu::argmax(neg.data(), 1), 0);
}
