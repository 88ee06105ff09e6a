#include <atomic>
#include <cstdlib>
#include <string>

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

// Compute capability 9.0 or later (Hopper), unless the environment variable `off` is "0".
bool hopper_unless(const char* off) {
  const char* env = std::getenv(off);
  if (env && std::string(env) == "0") return false;
  int dev = 0, major = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
}

}  // namespace

bool pdl_enabled() {
  static const bool on = hopper_unless("GALE_CUDA_PDL");
  return on;
}

bool clusters_enabled() {
  static const bool on = hopper_unless("GALE_CUDA_CLUSTERS");
  return on;
}

}  // namespace gale::cuda
