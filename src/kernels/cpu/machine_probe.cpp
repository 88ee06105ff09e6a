// The probe kernels use GCC/Clang target attributes rather than per-file ISA flags: each is
// one self-contained function of intrinsics, called only after __builtin_cpu_supports.
#include "kernels/cpu/machine_probe.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <sys/mman.h>

#include "core/error.h"
#include "core/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace gale::cpu {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs fn(thread_index) on exactly `threads` threads of the pool, restoring its size after.
template <class F>
void on_threads(int threads, F&& fn) {
  int saved = num_threads();
  set_num_threads(threads);
  parallel_for(threads, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) fn(int(i));
  });
  set_num_threads(saved);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t read_avx2(const uint64_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
  uint64_t r = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
  for (; i < n; ++i) r ^= p[i];
  return r;
}

__attribute__((target("avx512f"))) uint64_t read_avx512(const uint64_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 8));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 16));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 24));
  }
  __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, a);
  uint64_t r = 0;
  for (int l = 0; l < 8; ++l) r ^= lanes[l];
  for (; i < n; ++i) r ^= p[i];
  return r;
}

// 12 independent chains: enough to hide the FMA latency on two pipes (4 cycles × 2 on
// Zen4 / Skylake-X needs 8) while staying inside the register file.
__attribute__((target("avx512f"))) double fma_avx512(int64_t iters) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(float(j) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  return double(lanes[0] + lanes[15]);
}

__attribute__((target("avx2,fma"))) double fma_avx2(int64_t iters) {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(float(j) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  alignas(32) float lanes[8];
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  _mm256_store_ps(lanes, s);
  return double(lanes[0] + lanes[7]);
}
#endif

uint64_t read_scalar(const uint64_t* p, size_t n) {
  uint64_t a[4] = {};
  size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) a[l] ^= p[i + l];
  for (; i < n; ++i) a[0] ^= p[i];
  return a[0] ^ a[1] ^ a[2] ^ a[3];
}

double fma_scalar(int64_t iters) {
  float acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = float(j);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) acc[j] = acc[j] * 0.999999f + 1e-7f;
  return double(acc[0] + acc[7]);
}

bool has_avx2_fma() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool has_avx512() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

std::atomic<uint64_t> g_sink{0};  // keeps the probe loops from being optimised away

}  // namespace

ReadProbe::ReadProbe(int threads) : threads_(std::max(1, threads)) {
  // Huge-page-advised like the weights Gale streams (synthetic weights and, where the kernel
  // allows, large mappings), so the probe measures the same kind of memory the decode reads.
  buf_ = static_cast<uint64_t*>(std::aligned_alloc(size_t(2) << 20, kBytes));
  GALE_ASSERT(buf_);
#ifdef MADV_HUGEPAGE
  ::madvise(buf_, kBytes, MADV_HUGEPAGE);
#endif
  // Each thread first-touches the part it will read (NUMA-local where that matters).
  const size_t n = kBytes / 8;
  on_threads(threads_, [&](int t) {
    size_t b = n * size_t(t) / size_t(threads_), e = n * size_t(t + 1) / size_t(threads_);
    for (size_t i = b; i < e; ++i) buf_[i] = i * 0x9e3779b97f4a7c15ull;
  });
}

ReadProbe::~ReadProbe() { std::free(buf_); }

double ReadProbe::pass_gbs() {
  const size_t n = kBytes / 8;
  const bool avx2 = has_avx2_fma();
  const bool avx512 = has_avx512();
  auto t0 = Clock::now();
  on_threads(threads_, [&](int t) {
    size_t b = n * size_t(t) / size_t(threads_), e = n * size_t(t + 1) / size_t(threads_);
    b = b / 8 * 8;  // 64-byte aligned start for the aligned loads
#if defined(__x86_64__)
    uint64_t r = avx512 ? read_avx512(buf_ + b, e - b)
                 : avx2 ? read_avx2(buf_ + b, e - b) : read_scalar(buf_ + b, e - b);
#else
    uint64_t r = read_scalar(buf_ + b, e - b);
#endif
    g_sink.fetch_xor(r, std::memory_order_relaxed);
  });
  return double(kBytes) / seconds_since(t0) / 1e9;
}

double measure_read_bandwidth_gbs(int threads) {
  ReadProbe probe(threads);
  double best = 0;
  for (int run = 0; run < 8; ++run) best = std::max(best, probe.pass_gbs());
  return best;
}

double measure_fma_peak_gflops(int threads) {
  threads = std::max(1, threads);
  constexpr int64_t kIters = 10'000'000;
  struct Kernel {
    double (*fn)(int64_t);
    int lanes, chains;
  };
  // On Zen4 a 512-bit FMA is two 256-bit halves, so AVX2 may reach the same peak: try both.
  std::vector<Kernel> kernels = {{fma_scalar, 1, 8}};
#if defined(__x86_64__)
  if (has_avx2_fma()) kernels.push_back({fma_avx2, 8, 12});
  if (has_avx512()) kernels.push_back({fma_avx512, 16, 12});
#endif
  if (kernels.size() > 1) kernels.erase(kernels.begin());
  double best = 0;
  for (const Kernel& k : kernels) {
    for (int run = 0; run < 3; ++run) {
      auto t0 = Clock::now();
      on_threads(threads, [&](int) {
        double r = k.fn(kIters);
        uint64_t bits;
        std::memcpy(&bits, &r, 8);
        g_sink.fetch_xor(bits, std::memory_order_relaxed);
      });
      double flops = 2.0 * double(kIters) * k.chains * k.lanes * threads;
      best = std::max(best, flops / seconds_since(t0) / 1e9);
    }
  }
  return best;
}

}  // namespace gale::cpu
