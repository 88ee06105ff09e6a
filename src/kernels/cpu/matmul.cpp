// matmul driver: picks the SIMD path, splits the work over threads, blocks the GEMM.
//
// Decode (M ≤ 4) streams each W row once, converting on the fly; threads take contiguous
// ranges of W rows so each streams one region of memory.
//
// Prefill (M > 4) is a blocked GEMM that vectorises along M, so W never has to be
// transposed, only widened to f32:
//   for each block of ≤ kMc rows of x:
//     pack x once, transposed into panels of mr rows: xp[k][i]          (shared, read-only)
//     parallel over tiles of nr W rows (contiguous ranges per thread):
//       for each K-block of kKc:           xp's K-block stays in L2 across the W tiles
//         for each W tile:  convert nr×kKc of W to f32 (thread-local, fits L1), then
//           for each x panel: tile kernel → mr×nr partial sums, added into y.
// Each W element is converted once per x block and then reused by all its rows.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

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
  for (const char* name : {"avx512", "avx2", "scalar"})
    if (kernels_by_name(name) && cpu_has(name)) return kernels_by_name(name);
  return &detail::kScalarKernels;
}

std::atomic<const MatmulKernels*> g_kernels{nullptr};

const MatmulKernels& kernels() {
  const MatmulKernels* k = g_kernels.load(std::memory_order_acquire);
  if (!k) {
    k = best_kernels();
    g_kernels.store(k, std::memory_order_release);
  }
  return *k;
}

WKind weight_kind(DType t) {
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

int64_t wk_size(WKind wk) {
  return wk == WKind::F32 ? 4 : (wk == WKind::F16 || wk == WKind::BF16) ? 2 : 1;
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

void matvec(const MatmulKernels& kn, const MatmulProblem& p) {
  for (int64_t m0 = 0; m0 < p.M; m0 += detail::kMatvecMaxRows) {
    MatmulProblem q = p;
    q.M = std::min(detail::kMatvecMaxRows, p.M - m0);
    q.x = p.x + m0 * p.ldx;
    q.y = p.y + m0 * p.ldy;
    // At least ~64 KiB of weights per chunk so tiny layers are not split.
    int64_t min_rows = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, p.K * 2));
    parallel_for(p.N, [&](int64_t n0, int64_t n1, int) { kn.matvec(q, n0, n1); }, min_rows);
  }
}

void gemm_block(const MatmulKernels& kn, const MatmulProblem& p, int64_t m0, int64_t mb,
                float* xp_all) {
  const int mr = kn.mr, nr = kn.nr;
  // Panels: full mr-row panels, the last one half height when that is enough.
  Panel panels[kMc];
  int num_panels = 0;
  int64_t offset = 0;
  for (int64_t r = 0; r < mb;) {
    int h = (mb - r > mr / 2) ? mr : mr / 2;
    int64_t valid = std::min<int64_t>(h, mb - r);
    panels[num_panels++] = {r, valid, offset, h};
    offset += int64_t(h) * p.K;
    r += valid;
  }

  // Pack: xp[k * h + i] = x[m0 + row + i, k], zero for padding rows.
  parallel_for(num_panels, [&](int64_t b, int64_t e, int) {
    for (int64_t pi = b; pi < e; ++pi) {
      const Panel& pn = panels[pi];
      float* xp = xp_all + pn.offset;
      for (int64_t i = 0; i < pn.mr; ++i) {
        if (i < pn.valid) {
          const float* xr = p.x + (m0 + pn.row + i) * p.ldx;
          for (int64_t k = 0; k < p.K; ++k) xp[k * pn.mr + i] = xr[k];
        } else {
          for (int64_t k = 0; k < p.K; ++k) xp[k * pn.mr + i] = 0.0f;
        }
      }
    }
  });

  const int64_t wsize = wk_size(p.wk);
  const int64_t num_tiles = (p.N + nr - 1) / nr;
  parallel_for(num_tiles, [&](int64_t t0, int64_t t1, int) {
    thread_local Scratch wc_buf, ct_buf;
    float* wc = wc_buf.get(size_t(nr) * detail::kKc);
    float* ct = ct_buf.get(size_t(nr) * mr);
    for (int64_t k0 = 0; k0 < p.K; k0 += detail::kKc) {
      const int64_t kc = std::min(detail::kKc, p.K - k0);
      const bool first = k0 == 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t * nr, rows = std::min<int64_t>(nr, p.N - n);
        kn.convert_rows(static_cast<const char*>(p.w) + n * p.K * wsize, p.wk, p.K, rows,
                        k0, kc, wc);
        for (int64_t j = rows; j < nr; ++j) std::memset(wc + j * detail::kKc, 0, size_t(kc) * 4);
        for (int pi = 0; pi < num_panels; ++pi) {
          const Panel& pn = panels[pi];
          kn.tile(xp_all + pn.offset + k0 * pn.mr, pn.mr, wc, kc, ct);
          // ct is [nr][mr]: column j of the tile, rows i.
          for (int64_t i = 0; i < pn.valid; ++i) {
            float* yr = p.y + (m0 + pn.row + i) * p.ldy + n;
            for (int64_t j = 0; j < rows; ++j) {
              float v = ct[j * pn.mr + i];
              if (first) {
                if (p.bias) v += p.bias[n + j];
                yr[j] = p.accumulate ? yr[j] + v : v;
              } else {
                yr[j] += v;
              }
            }
          }
        }
      }
    }
  });
}

void gemm(const MatmulKernels& kn, const MatmulProblem& p) {
  // Equal blocks of at most kMc rows, so M = 257 is two blocks of 129, not 256 + 1.
  const int64_t num_blocks = (p.M + kMc - 1) / kMc;
  const int64_t mb_max = (p.M + num_blocks - 1) / num_blocks;
  thread_local Scratch xp_buf;
  // Panel heights round each block up by less than one panel.
  float* xp = xp_buf.get(size_t(mb_max + kn.mr) * size_t(p.K));
  for (int64_t m0 = 0; m0 < p.M; m0 += mb_max)
    gemm_block(kn, p, m0, std::min(mb_max, p.M - m0), xp);
}

}  // namespace

void matmul(const float* x, int64_t ldx, int64_t M, int64_t K, const void* W, DType wdt, int64_t N,
            const float* bias, float* y, int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  MatmulProblem p{x, ldx, M, K, W, weight_kind(wdt), N, bias, y, ldy, accumulate};
  if (K <= 0) {  // empty sum: y = bias (+ y)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float v = bias ? bias[n] : 0.0f;
        y[m * ldy + n] = accumulate ? y[m * ldy + n] + v : v;
      }
    return;
  }
  const MatmulKernels& kn = kernels();
  if (M <= detail::kMatvecMaxRows) matvec(kn, p);
  else gemm(kn, p);
}

const char* matmul_isa() { return kernels().name; }

std::vector<std::string> matmul_isas_available() {
  std::vector<std::string> out;
  for (const char* name : {"avx512", "avx2", "scalar"})
    if (kernels_by_name(name) && cpu_has(name)) out.push_back(name);
  return out;
}

void set_matmul_isa(std::string_view name) {
  const MatmulKernels* k = kernels_by_name(name);
  if (!k) throw Error("unknown matmul ISA '" + std::string(name) + "' (avx512, avx2 or scalar)");
  if (!cpu_has(std::string(name).c_str()))
    throw Error("matmul ISA '" + std::string(name) + "' is not supported by this CPU");
  g_kernels.store(k, std::memory_order_release);
}

}  // namespace gale::cpu
