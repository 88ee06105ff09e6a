// matmul driver: picks the SIMD path, splits the work over threads, blocks the GEMM.
//
// Both paths take a list of problems sharing x (matmul_multi; matmul is a list of one), and
// the threads split the union of their W rows, so q/k/v or gate/up run as one product.
//
// Decode (M ≤ 4) streams each W row once, converting on the fly; threads take contiguous
// ranges of W rows (in units of 8, see kMatvecUnit) so each streams one region of memory.
//
// Prefill (M > 4) is a blocked GEMM that vectorises along M, so W never has to be
// transposed, only widened to f32:
//   for each block of ≤ kMc rows of x:
//     pack x once, transposed into panels of mr rows: xp[k][i]          (shared, read-only)
//     parallel over tiles of nr W rows of all problems (contiguous ranges per thread):
//       for each K-block of kKc:           xp's K-block stays in L2 across the W tiles
//         for each W tile:  convert nr×kKc of W to f32 (thread-local, fits L1), then
//           for each x panel: tile kernel → mr×nr partial sums, added into y;
//           the tile kernel prefetches that panel's y lines and a share of the next W tile.
// Each W element is converted once per x block and then reused by all its rows.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul_isa.h"
#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu {
namespace {

using detail::MatmulKernels;
using detail::MatmulProblem;
using detail::WKind;

// Rows of x per GEMM block. Its packed K-block (M=128: 128 × kKc × 4 B = 512 KiB) is reused
// by every W tile; with 256 rows it fills a Zen4 L2, which still measured no worse.
constexpr int64_t kMc = 256;

#if defined(__x86_64__) || defined(__i386__)
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c".
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
#endif

bool cpu_has(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx512bf16") == 0)
    return cpu_has("avx512") && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi") &&
           __builtin_cpu_supports("avx512vnni");
  if (std::strcmp(isa, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && cpu_has_f16c();
  if (std::strcmp(isa, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#endif
  return std::strcmp(isa, "scalar") == 0;
}

const MatmulKernels* kernels_by_name(std::string_view name) {
#if defined(__x86_64__) || defined(__i386__)
  if (name == "avx512bf16") return &detail::kAvx512Bf16Kernels;
  if (name == "avx512") return &detail::kAvx512Kernels;
  if (name == "avx2") return &detail::kAvx2Kernels;
#endif
  if (name == "scalar") return &detail::kScalarKernels;
  return nullptr;
}

const MatmulKernels* best_kernels() {
  const char* forced = std::getenv("GALE_ISA");
  if (forced && *forced) {
    if (kernels_by_name(forced) && cpu_has(forced)) return kernels_by_name(forced);
    std::fprintf(stderr, "gale: GALE_ISA=%s is unknown or not supported by this CPU; ignored\n",
                 forced);
  }
  for (const char* name : {"avx512bf16", "avx512", "avx2", "scalar"})
    if (kernels_by_name(name) && cpu_has(name)) return kernels_by_name(name);
  return &detail::kScalarKernels;
}

std::atomic<const MatmulKernels*> g_kernels{nullptr};

// GALE_CPU_INT_A8=1: integer weights' decode with x quantized to int8 (matmul_isa.h).
bool int_a8_from_env() {
  const char* v = std::getenv("GALE_CPU_INT_A8");
  return v && *v && std::strcmp(v, "0") != 0;
}
std::atomic<bool> g_int_a8{int_a8_from_env()};
// GALE_CPU_INT_A8=all: every integer matmul, prefill included, runs the A8 decode kernels (four
// rows at a time). Slow for prompts; it exists so that `gale eval`, which scores prefill windows,
// can measure the A8 numerics' quality.
std::atomic<bool> g_int_a8_all{[] {
  const char* v = std::getenv("GALE_CPU_INT_A8");
  return v && std::strcmp(v, "all") == 0;
}()};

const MatmulKernels& kernels() {
  const MatmulKernels* k = g_kernels.load(std::memory_order_acquire);
  if (!k) {
    k = best_kernels();
    g_kernels.store(k, std::memory_order_release);
  }
  return *k;
}

WKind weight_kind(DType t, const WeightScales& sc) {
  if (t == DType::I8 || (t == DType::U8 && sc.u4)) {
    if (!sc.s) throw Error("matmul: integer weights need their scales");
    return t == DType::I8 ? WKind::I8 : WKind::U4;
  }
  switch (t) {
    case DType::F32: return WKind::F32;
    case DType::F16: return WKind::F16;
    case DType::BF16: return WKind::BF16;
    case DType::F8_E4M3: return WKind::E4M3;
    case DType::F8_E5M2: return WKind::E5M2;
    default: break;
  }
  throw Error("matmul: unsupported weight dtype " + std::string(dtype_name(t)));
}

// A grow-only, 64-byte aligned float buffer (full cache lines for the SIMD loads).
class Scratch {
 public:
  float* get(size_t n) {
    if (n > size_) {
      data_.reset(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)));
      GALE_ASSERT(data_);
      size_ = n;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
  size_t size_ = 0;
};

// One x panel of a GEMM block: rows [row, row + valid) packed at xp + offset, mr wide.
struct Panel {
  int64_t row, valid, offset;
  int mr;
};

// Decode threads split W rows in units of this many: every matvec kernel groups rows by a
// divisor of 8 counted from the start of its range, so with ranges aligned to 8 a row's sum
// does not depend on how the rows were split (matmul_multi then equals matmul bitwise).
constexpr int64_t kMatvecUnit = 8;

int64_t num_units(const MatmulProblem& p) { return (p.N + kMatvecUnit - 1) / kMatvecUnit; }

void matvec(const MatmulKernels& kn, std::span<const MatmulProblem> ps) {
  const int64_t M = ps[0].M, K = ps[0].K;
  int64_t total = 0;
  for (const MatmulProblem& p : ps) total += num_units(p);
  // At least ~64 KiB of weights per chunk so tiny layers are not split.
  const int64_t min_rows = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, K * 2));
  const int64_t min_units = (min_rows + kMatvecUnit - 1) / kMatvecUnit;
  for (int64_t m0 = 0; m0 < M; m0 += detail::kMatvecMaxRows) {
    const int64_t mx = std::min(detail::kMatvecMaxRows, M - m0);
    parallel_for(total, [&](int64_t u0, int64_t u1, int) {
      int64_t base = 0;  // first unit of target i in the union
      for (const MatmulProblem& p : ps) {
        const int64_t nu = num_units(p);
        const int64_t b = std::max(u0, base), e = std::min(u1, base + nu);
        if (b < e) {
          MatmulProblem q = p;
          q.M = mx;
          q.x = p.x + m0 * p.ldx;
          q.y = p.y + m0 * p.ldy;
          kn.matvec(q, (b - base) * kMatvecUnit, std::min(p.N, (e - base) * kMatvecUnit));
        }
        base += nu;
      }
    }, min_units);
  }
}

const char* line_of(const void* p) {
  return reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63));
}

// Appends the cache lines of [p, p + bytes) to out.
void add_lines(const void* p, int64_t bytes, std::vector<const char*>& out) {
  const char* b = line_of(p);
  const char* e = static_cast<const char*>(p) + bytes;
  for (; b < e; b += 64) out.push_back(b);
}

// The GEMM over several problems sharing x (same x, ldx, M, K): tiles of nr W rows are
// numbered across all problems (tile_begin[i] is problem i's first), and each thread takes a
// contiguous range of that union.
void gemm_block(const MatmulKernels& kn, std::span<const MatmulProblem> ps,
                const std::vector<int64_t>& tile_begin, int64_t m0, int64_t mb, float* xp_all) {
  const MatmulProblem& p0 = ps[0];
  const int64_t K = p0.K;
  const int mr = kn.mr, nr = kn.nr;
  // Panels: full mr-row panels, the last one half height when that is enough.
  Panel panels[kMc];
  int num_panels = 0;
  int64_t offset = 0;
  for (int64_t r = 0; r < mb;) {
    int h = (mb - r > mr / 2) ? mr : mr / 2;
    int64_t valid = std::min<int64_t>(h, mb - r);
    panels[num_panels++] = {r, valid, offset, h};
    offset += int64_t(h) * K;
    r += valid;
  }

  // Pack: xp[k * h + i] = x[m0 + row + i, k], zero for padding rows.
  parallel_for(num_panels, [&](int64_t b, int64_t e, int) {
    for (int64_t pi = b; pi < e; ++pi) {
      const Panel& pn = panels[pi];
      float* xp = xp_all + pn.offset;
      for (int64_t i = 0; i < pn.mr; ++i) {
        if (i < pn.valid) {
          const float* xr = p0.x + (m0 + pn.row + i) * p0.ldx;
          for (int64_t k = 0; k < K; ++k) xp[k * pn.mr + i] = xr[k];
        } else {
          for (int64_t k = 0; k < K; ++k) xp[k * pn.mr + i] = 0.0f;
        }
      }
    }
  });

  const int64_t num_tiles = tile_begin.back();
  parallel_for(num_tiles, [&](int64_t t0, int64_t t1, int) {
    thread_local Scratch wc_buf, ct_buf;
    thread_local std::vector<const char*> w_lines, pf;
    float* wc = wc_buf.get(size_t(nr) * detail::kWcStride);
    float* ct = ct_buf.get(size_t(nr) * mr);
    // Tile g of the union: its problem (found by walking forward) and first W row.
    size_t pi_cur = 0;
    auto locate = [&](int64_t g, size_t& pi) {
      while (g >= tile_begin[pi + 1]) ++pi;
      return (g - tile_begin[pi]) * nr;
    };
    auto w_rows = [&](const MatmulProblem& p, int64_t n, int64_t k0) {
      return static_cast<const char*>(p.w) + detail::wk_bytes(p.wk, n * K + k0);
    };
    for (int64_t k0 = 0; k0 < K; k0 += detail::kKc) {
      const int64_t kc = std::min(detail::kKc, K - k0);
      const bool first = k0 == 0;
      pi_cur = 0;
      for (int64_t g = t0; g < t1; ++g) {
        const int64_t n = locate(g, pi_cur);
        const MatmulProblem& pr = ps[pi_cur];
        const int64_t rows = std::min<int64_t>(nr, pr.N - n);
        kn.convert_rows(w_rows(pr, n, 0), pr.wk, K, rows, k0, kc, wc, &pr.scale, n);
        for (int64_t j = rows; j < nr; ++j) std::memset(wc + j * detail::kWcStride, 0, size_t(kc) * 4);

        // The W block converted next by this thread: the next tile of this K-block, or the
        // first tile of the next one.
        w_lines.clear();
        {
          int64_t gn = g + 1, k0n = k0;
          if (gn == t1) gn = t0, k0n = k0 + detail::kKc;
          if (k0n < K) {
            size_t pin = gn > g ? pi_cur : 0;
            const int64_t nn = locate(gn, pin);
            const MatmulProblem& q = ps[pin];
            const int64_t kcn = std::min(detail::kKc, K - k0n);
            for (int64_t j = 0, rn = std::min<int64_t>(nr, q.N - nn); j < rn; ++j)
              add_lines(w_rows(q, nn + j, k0n), detail::wk_bytes(q.wk, kcn), w_lines);
          }
        }

        for (int pn_i = 0; pn_i < num_panels; ++pn_i) {
          const Panel& pn = panels[pn_i];
          pf.clear();
          for (int64_t i = 0; i < pn.valid; ++i)
            add_lines(pr.y + (m0 + pn.row + i) * pr.ldy + n, rows * 4, pf);
          const size_t wb = w_lines.size() * size_t(pn_i) / size_t(num_panels);
          const size_t we = w_lines.size() * size_t(pn_i + 1) / size_t(num_panels);
          pf.insert(pf.end(), w_lines.begin() + ptrdiff_t(wb), w_lines.begin() + ptrdiff_t(we));
          float* y0 = pr.y + (m0 + pn.row) * pr.ldy + n;
          if (kn.tile_writes_y) {
            const detail::TileOut out{y0, pr.ldy, pn.valid, rows, first && pr.bias ? pr.bias + n : nullptr,
                                      !first || pr.accumulate};
            kn.tile(xp_all + pn.offset + k0 * pn.mr, pn.mr, wc, kc, ct, pf.data(), int64_t(pf.size()), &out);
            continue;
          }
          kn.tile(xp_all + pn.offset + k0 * pn.mr, pn.mr, wc, kc, ct, pf.data(), int64_t(pf.size()), nullptr);
          // ct is [nr][mr]: column j of the tile, rows i.
          for (int64_t i = 0; i < pn.valid; ++i) {
            float* yr = pr.y + (m0 + pn.row + i) * pr.ldy + n;
            const float* c = ct + i;
            if (!first) {
              for (int64_t j = 0; j < rows; ++j) yr[j] += c[j * pn.mr];
            } else {
              for (int64_t j = 0; j < rows; ++j) {
                float v = c[j * pn.mr];
                if (pr.bias) v += pr.bias[n + j];
                yr[j] = pr.accumulate ? yr[j] + v : v;
              }
            }
          }
        }
      }
    }
  });
}

void gemm(const MatmulKernels& kn, std::span<const MatmulProblem> ps) {
  const int64_t M = ps[0].M, K = ps[0].K;
  std::vector<int64_t> tile_begin(1, 0);
  for (const MatmulProblem& p : ps) tile_begin.push_back(tile_begin.back() + (p.N + kn.nr - 1) / kn.nr);
  // Equal blocks of at most kMc rows, so M = 257 is two blocks of 129, not 256 + 1.
  const int64_t num_blocks = (M + kMc - 1) / kMc;
  const int64_t mb_max = (M + num_blocks - 1) / num_blocks;
  thread_local Scratch xp_buf;
  // Panel heights round each block up by less than one panel.
  float* xp = xp_buf.get(size_t(mb_max + kn.mr) * size_t(K));
  for (int64_t m0 = 0; m0 < M; m0 += mb_max)
    gemm_block(kn, ps, tile_begin, m0, std::min(mb_max, M - m0), xp);
}

void run_problems(std::span<const MatmulProblem> ps) {
  const MatmulProblem& p0 = ps[0];
  if (p0.K <= 0) {  // empty sums: y = bias (+ y)
    for (const MatmulProblem& p : ps)
      for (int64_t m = 0; m < p.M; ++m)
        for (int64_t n = 0; n < p.N; ++n) {
          float v = p.bias ? p.bias[n] : 0.0f;
          p.y[m * p.ldy + n] = p.accumulate ? p.y[m * p.ldy + n] + v : v;
        }
    return;
  }
  const MatmulKernels& kn = kernels();
  const bool a8_all = p0.int_a8 && (p0.wk == WKind::I8 || p0.wk == WKind::U4) &&
                      g_int_a8_all.load(std::memory_order_relaxed);
  if (p0.M <= detail::kMatvecMaxRows || a8_all) matvec(kn, ps);
  else gemm(kn, ps);
}

detail::WScale scale_of(const WeightScales& s, int64_t N, int64_t K) {
  if (!s.s) return {nullptr, 1, 1, 1, nullptr};
  GALE_ASSERT(s.rows > 0 && s.cols > 0 && s.ld > 0);
  GALE_ASSERT(s.cols >= K || s.cols % 16 == 0);  // segments start on whole vectors
  return {s.s, std::min(s.rows, std::max<int64_t>(N, 1)), std::min(s.cols, K), s.ld, s.zero};
}

// Integer weights' extra rules (matmul.h): U4 rows of whole bytes, groups of whole 32-column
// blocks (the SIMD kernels' unit).
void check_int(WKind wk, const detail::WScale& sc, int64_t K) {
  if (wk != WKind::I8 && wk != WKind::U4) return;
  if (wk == WKind::U4 && K % 2 != 0) throw Error("matmul: 4-bit weights need an even K");
  if (sc.cols < K && sc.cols % 32 != 0) throw Error("matmul: integer weight groups must be a multiple of 32");
}

}  // namespace

void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate, const WeightScales& scales) {
  if (M <= 0 || N <= 0) return;
  const MatmulProblem p{x,  ldx, M, K, W, weight_kind(wdt, scales), N, bias, y, ldy, accumulate, scale_of(scales, N, K),
                        g_int_a8.load(std::memory_order_relaxed)};
  check_int(p.wk, p.scale, K);
  run_problems({&p, 1});
}

void matmul_multi(const float* x, int64_t ldx, int64_t M, int64_t K,
                  std::span<const MatmulTarget> targets) {
  if (M <= 0) return;
  MatmulProblem local[8];
  std::vector<MatmulProblem> heap;
  MatmulProblem* ps = local;
  if (targets.size() > std::size(local)) {
    heap.resize(targets.size());
    ps = heap.data();
  }
  size_t count = 0;
  for (const MatmulTarget& t : targets)
    if (t.n > 0) {
      ps[count] = {x,   ldx,   M,     K,     t.w, weight_kind(t.dtype, t.scales), t.n, t.bias, t.y, t.ldy, t.accumulate,
                   scale_of(t.scales, t.n, K), g_int_a8.load(std::memory_order_relaxed)};
      check_int(ps[count].wk, ps[count].scale, K);
      ++count;
    }
  if (count > 0) run_problems({ps, count});
}

const char* matmul_isa() { return kernels().name; }

std::vector<std::string> matmul_isas_available() {
  std::vector<std::string> out;
  for (const char* name : {"avx512bf16", "avx512", "avx2", "scalar"})
    if (kernels_by_name(name) && cpu_has(name)) out.push_back(name);
  return out;
}

void set_matmul_int_a8(bool on) { g_int_a8.store(on, std::memory_order_relaxed); }
bool matmul_int_a8() { return g_int_a8.load(std::memory_order_relaxed); }

void set_matmul_isa(std::string_view name) {
  const MatmulKernels* k = kernels_by_name(name);
  if (!k) throw Error("unknown matmul ISA '" + std::string(name) + "' (avx512bf16, avx512, avx2 or scalar)");
  if (!cpu_has(std::string(name).c_str()))
    throw Error("matmul ISA '" + std::string(name) + "' is not supported by this CPU");
  g_kernels.store(k, std::memory_order_release);
}

}  // namespace gale::cpu
