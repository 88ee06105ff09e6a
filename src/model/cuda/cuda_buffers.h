// What the CUDA model layer (CudaBackend, CudaSampling) shares: CUDA errors as gale::Error, and
// buffers that grow on demand.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <string>

#include "core/error.h"

namespace gale {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

// A device or pinned host buffer grown on demand: to at least twice its old size, so that a
// slowly growing need reallocates rarely. Its contents are not kept across a growth.
struct GrowBuffer {
  void* p = nullptr;
  size_t bytes = 0;
};

// Grows b to at least `need` bytes with alloc(&p, bytes) / release(p), a CUDA allocator pair.
template <class Alloc, class Release>
void grow_with(GrowBuffer& b, size_t need, Alloc alloc, Release release, const char* what) {
  if (need <= b.bytes) return;
  const size_t bytes = std::max(need, 2 * b.bytes);
  if (b.p) release(b.p);
  b.p = nullptr;
  b.bytes = 0;
  cuda_check(alloc(&b.p, bytes), what);
  b.bytes = bytes;
}

// Grows b to at least `need` bytes of pinned host memory (cudaMallocHost).
inline void grow_pinned(GrowBuffer& b, size_t need) {
  grow_with(b, need, [](void** p, size_t n) { return cudaMallocHost(p, n); }, cudaFreeHost, "cudaMallocHost");
}

// Grows b to at least `need` bytes of device memory straight from cudaMalloc (CudaBackend's own
// buffers go through its allocator instead, which accounts for them).
inline void grow_cuda_malloc(GrowBuffer& b, size_t need) {
  grow_with(b, need, [](void** p, size_t n) { return cudaMalloc(p, n); }, cudaFree, "cudaMalloc");
}

}  // namespace gale
