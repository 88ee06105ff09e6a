#include <atomic>

#include "kernels/cuda/common.cuh"

namespace gale::cuda {

int device_sm_count() {
  // Cached per process (one device per process for now; the backend will pass it explicitly
  // once it manages several).
  static std::atomic<int> cached{0};
  int v = cached.load(std::memory_order_relaxed);
  if (v > 0) return v;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0)
    v = 132;  // H100 SXM; only sizes the split, never correctness
  cached.store(v, std::memory_order_relaxed);
  return v;
}

namespace {

// Compute capability 9.0 or later (Hopper), read once per process.
bool hopper() {
  static const bool on = [] {
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
  }();
  return on;
}

// Set by the backend (possibly on another thread than the one that launches); relaxed loads
// suffice: the values are set before the first launch and never change in between.
std::atomic<bool> g_pdl{true}, g_clusters{true}, g_gemv_rotate{true};
std::atomic<int> g_gemv_unroll{0};

}  // namespace

void set_kernel_switches(const KernelSwitches& s) {
  g_pdl.store(s.pdl, std::memory_order_relaxed);
  g_clusters.store(s.clusters, std::memory_order_relaxed);
  g_gemv_rotate.store(s.gemv_rotate, std::memory_order_relaxed);
  g_gemv_unroll.store(s.gemv_unroll, std::memory_order_relaxed);
}

KernelSwitches kernel_switches() {
  return {g_pdl.load(std::memory_order_relaxed), g_clusters.load(std::memory_order_relaxed),
          g_gemv_rotate.load(std::memory_order_relaxed), g_gemv_unroll.load(std::memory_order_relaxed)};
}

bool pdl_enabled() { return g_pdl.load(std::memory_order_relaxed) && hopper(); }

bool clusters_enabled() { return g_clusters.load(std::memory_order_relaxed) && hopper(); }

}  // namespace gale::cuda
