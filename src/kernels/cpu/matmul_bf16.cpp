// matmul_multi_bf16's driver: picks the path, packs x to bf16, splits W over threads, and writes
// the block kernels' sums into y.
//
// Prefill blocking (M > 4, BF16 weights):
//   for each block of ≤ mc rows of x (its packed bf16 copy ≤ 1 MiB, so it stays in L2):
//     pack x once into groups of 16 rows, column pairs interleaved (matmul_bf16_kernels.h)
//     parallel over blocks of 32 W rows of all targets (contiguous ranges per thread):
//       block kernel: those 32 rows × every 32-row pair of x groups over all of K → ct
//       write ct into y (+ bias, + y)
// W is read in place when K is a multiple of 32 and the block has all 32 rows; otherwise the
// block is first copied into a zero-padded buffer (the kernels read whole 32-column chunks).
#include "kernels/cpu/matmul_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul_bf16_kernels.h"
#include "kernels/cpu/matmul_kernels.h"

namespace gale::cpu {
namespace {

enum class Path : int { Exact, Avx512Bf16, Amx };

const char* path_name(Path p) {
  switch (p) {
    case Path::Amx: return "amx";
    case Path::Avx512Bf16: return "avx512bf16";
    case Path::Exact: break;
  }
  return "exact";
}

#if defined(__x86_64__) || defined(__i386__)
bool has_avx512bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");  // all its file's flags
}

// AMX-BF16 and AMX-TILE in CPUID leaf 7 (EDX bits 22 and 24), and the tile data state granted:
// Linux enables it per process only on request (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023 for
// XFEATURE_XTILEDATA = 18); without the grant the first tile instruction faults. The grant
// covers every thread of the process.
bool has_amx() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
#endif

bool available(Path p) {
#if defined(__x86_64__) || defined(__i386__)
  if (p == Path::Amx) return has_amx();
  if (p == Path::Avx512Bf16) return has_avx512bf16();
#endif
  return p == Path::Exact;
}

constexpr Path kPaths[] = {Path::Amx, Path::Avx512Bf16, Path::Exact};

Path best_path() {
  // GALE_BF16_GEMM=amx|avx512bf16|exact picks one by hand (benchmarks), as GALE_ISA does for matmul.
  const char* forced = std::getenv("GALE_BF16_GEMM");
  if (forced && *forced) {
    for (Path p : kPaths)
      if (std::strcmp(forced, path_name(p)) == 0 && available(p)) return p;
    std::fprintf(stderr, "gale: GALE_BF16_GEMM=%s is unknown or not supported by this CPU; ignored\n", forced);
  }
  // vdpbf16ps is not the default: on the Sapphire Rapids guest it measured slower than widening
  // to f32 (2 threads, synthetic:llama3-1b pp512 --dtype bf16: 86 tok/s against the exact
  // route's 108 and AMX's 254-295), its one-port throughput giving no more products per cycle
  // than two FMA ports. It stays selectable (GALE_BF16_GEMM, set_matmul_bf16_path) for CPUs
  // without AMX where it may pay, such as Zen 4 (not measured).
  return available(Path::Amx) ? Path::Amx : Path::Exact;
}

std::atomic<int> g_path{-1};

Path current_path() {
  int p = g_path.load(std::memory_order_acquire);
  if (p < 0) {
    p = int(best_path());
    g_path.store(p, std::memory_order_release);
  }
  return Path(p);
}

detail::Bf16BlockFn block_fn(Path p) {
#if defined(__x86_64__) || defined(__i386__)
  if (p == Path::Amx) return detail::bf16_block_amx;
  if (p == Path::Avx512Bf16) return detail::bf16_block_avx512bf16;
#endif
  (void)p;
  return nullptr;
}

// A grow-only, 64-byte aligned buffer.
template <class T>
class Scratch {
 public:
  T* get(size_t n) {
    if (n > size_) {
      data_.reset(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)));
      GALE_ASSERT(data_);
      size_ = n;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T[], Free> data_;
  size_t size_ = 0;
};

// Rounds x to bf16 (kept as f32 values) and runs the exact kernels: the definition itself.
void exact(const float* x, int64_t ldx, int64_t M, int64_t K, std::span<const MatmulTarget> targets) {
  thread_local Scratch<float> buf;
  float* xr = buf.get(size_t(M) * size_t(std::max<int64_t>(K, 1)));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const uint32_t b = uint32_t(f32_to_bf16(x[m * ldx + k])) << 16;
      std::memcpy(xr + m * K + k, &b, 4);
    }
  matmul_multi(xr, K, M, K, targets);
}

constexpr int64_t kBlockRows = 32;  // W rows per block kernel call; also x rows per group pair

void gemm(detail::Bf16BlockFn fn, const float* x, int64_t ldx, int64_t M, int64_t K,
          std::span<const MatmulTarget> ts) {
  const int64_t kp = (K + 31) / 32 * 32;
  // Rows per x block: its packed copy ≤ 1 MiB; equal blocks, each a multiple of 32 rows.
  const int64_t mc_max = std::max<int64_t>(32, (int64_t(1) << 20) / (kp * 2) / 32 * 32);
  const int64_t num_blocks = (M + mc_max - 1) / mc_max;
  const int64_t mc = ((M + num_blocks - 1) / num_blocks + 31) / 32 * 32;

  std::vector<int64_t> tile_begin(1, 0);
  for (const MatmulTarget& t : ts) tile_begin.push_back(tile_begin.back() + (t.n + kBlockRows - 1) / kBlockRows);
  const int64_t num_tiles = tile_begin.back();

  thread_local Scratch<uint16_t> xb_buf;
  const int64_t group = kp / 2 * 32;  // elements per packed group of 16 rows
  uint16_t* xb = xb_buf.get(size_t(mc / 16) * size_t(group));

  for (int64_t m0 = 0; m0 < M; m0 += mc) {
    const int64_t mb = std::min(mc, M - m0);
    const int64_t pairs = (mb + 31) / 32;
    parallel_for(2 * pairs, [&](int64_t g0, int64_t g1, int) {
      for (int64_t g = g0; g < g1; ++g) {
        uint16_t* dst = xb + g * group;
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t m = 16 * g + i;
          uint16_t* d = dst + 2 * i;
          if (m >= mb) {
            for (int64_t p = 0; p < kp / 2; ++p) d[p * 32] = d[p * 32 + 1] = 0;
            continue;
          }
          const float* xr = x + (m0 + m) * ldx;
          for (int64_t k = 0; k < kp; ++k) d[(k >> 1) * 32 + (k & 1)] = k < K ? f32_to_bf16(xr[k]) : 0;
        }
      }
    });

    parallel_for(num_tiles, [&](int64_t t0, int64_t t1, int) {
      thread_local Scratch<float> ct_buf;
      thread_local Scratch<uint16_t> wpad_buf;
      float* ct = ct_buf.get(size_t(pairs) * 1024);
      size_t ti = 0;
      for (int64_t g = t0; g < t1; ++g) {
        while (g >= tile_begin[ti + 1]) ++ti;
        const MatmulTarget& t = ts[ti];
        const int64_t n = (g - tile_begin[ti]) * kBlockRows;
        const int64_t rows = std::min<int64_t>(kBlockRows, t.n - n);
        const uint16_t* w = static_cast<const uint16_t*>(t.w) + n * K;
        int64_t ldw = K;
        if (rows < kBlockRows || kp != K) {
          const int64_t ldp = kp;
          uint16_t* wp = wpad_buf.get(size_t(kBlockRows) * size_t(ldp));
          for (int64_t j = 0; j < kBlockRows; ++j) {
            uint16_t* dst = wp + j * ldp;
            if (j < rows) {
              std::memcpy(dst, w + j * K, size_t(K) * 2);
              std::memset(dst + K, 0, size_t(kp - K) * 2);
            } else {
              std::memset(dst, 0, size_t(kp) * 2);
            }
          }
          w = wp;
          ldw = ldp;
        }
        fn(w, ldw, xb, pairs, kp, ct);
        // ct[q][j][i] is y row m0 + 32q + i, column n + j; operations in matmul's order:
        // y = s + bias, or y + (s + bias).
        const float* bias = t.bias ? t.bias + n : nullptr;
        for (int64_t m = 0; m < mb; ++m) {
          const float* c = ct + (m >> 5) * 1024 + (m & 31);
          float* yr = t.y + (m0 + m) * t.ldy + n;
          for (int64_t j = 0; j < rows; ++j) {
            float v = c[j * 32];
            if (bias) v += bias[j];
            yr[j] = t.accumulate ? yr[j] + v : v;
          }
        }
      }
    });
  }
}

}  // namespace

void matmul_multi_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, std::span<const MatmulTarget> targets) {
  if (M <= 0) return;
  const Path path = current_path();
  bool fast = path != Path::Exact && M > detail::kMatvecMaxRows && K > 0;
  for (const MatmulTarget& t : targets) fast = fast && t.dtype == DType::BF16 && !t.scales.s;
  if (!fast) return exact(x, ldx, M, K, targets);
  // Targets with no rows take no part (as in matmul_multi).
  MatmulTarget local[8];
  std::vector<MatmulTarget> heap;
  MatmulTarget* ps = local;
  if (targets.size() > std::size(local)) {
    heap.resize(targets.size());
    ps = heap.data();
  }
  size_t count = 0;
  for (const MatmulTarget& t : targets)
    if (t.n > 0) ps[count++] = t;
  if (count > 0) gemm(block_fn(path), x, ldx, M, K, {ps, count});
}

std::vector<std::string> matmul_bf16_paths_available() {
  std::vector<std::string> out;
  for (Path p : kPaths)
    if (available(p)) out.push_back(path_name(p));
  return out;
}

const char* matmul_bf16_path() { return path_name(current_path()); }

void set_matmul_bf16_path(std::string_view name) {
  for (Path p : kPaths)
    if (name == path_name(p)) {
      if (!available(p)) throw Error("bf16 matmul path '" + std::string(name) + "' is not supported by this CPU");
      g_path.store(int(p), std::memory_order_release);
      return;
    }
  throw Error("unknown bf16 matmul path '" + std::string(name) + "' (amx, avx512bf16 or exact)");
}

}  // namespace gale::cpu
