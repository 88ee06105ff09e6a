// Shared pieces of the CUDA kernels: status macros, element loads/stores by dtype, warp
// reductions. Device-only helpers are guarded by __CUDACC__ so the launcher headers that
// include this stay usable from plain C++ (tests, the future backend).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "core/dtype.h"

// Returns the failing cudaError_t from the enclosing function (FlashInfer's FLASHINFER_CUDA_CALL habit).
#define GALE_CUDA_TRY(call)                 \
  do {                                      \
    cudaError_t gale_err_ = (call);         \
    if (gale_err_ != cudaSuccess) return gale_err_; \
  } while (0)

namespace gale::cuda {

// Multiprocessor count of the current device, read once per process.
int device_sm_count();

// Launch choices the user may switch off for A/B runs. The kernels read no environment: the CUDA
// backend parses the switches once (model/cuda/cuda_options.h) and sets them here before its
// first launch; callers without a backend (kernel tests, kernel benchmarks) get these defaults.
struct KernelSwitches {
  bool pdl = true;          // GALE_CUDA_PDL: programmatic dependent launch where the card has it
  bool clusters = true;     // GALE_CUDA_CLUSTERS: thread block clusters where the card has them
  bool gemv_rotate = true;  // GALE_GEMV_ROTATE: GEMV rows start at rotated pieces
  int gemv_unroll = 0;      // GALE_GEMV_UNROLL: loads in flight per lane in the GEMV, 4 or 8; 0 = by width
};
void set_kernel_switches(const KernelSwitches& s);
KernelSwitches kernel_switches();

// Whether kernels are launched with programmatic dependent launch (PDL, Hopper and later): the
// next kernel in the stream may start while this one finishes, and waits in pdl_wait() for its
// inputs. Off below compute capability 9.0 or with KernelSwitches::pdl off.
bool pdl_enabled();

// Whether kernels may be launched in thread block clusters (Hopper and later: blocks of a cluster
// read each other's shared memory). Off below compute capability 9.0 or with KernelSwitches::clusters off.
bool clusters_enabled();

}  // namespace gale::cuda

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace gale::cuda {

// Programmatic dependent launch. Every kernel launched through launch() calls pdl_wait() before
// it reads what an earlier kernel wrote or writes anything (the earlier kernel may still be
// running); only immutable data (weights) may be read before it. pdl_launch_dependents() lets
// the next kernel be scheduled once every block of this one has started. Both are no-ops
// without PDL (plain launches, pre-Hopper targets).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) in clusters of cluster_x blocks along
// x (grid.x a multiple of it; > 1 only where clusters_enabled()), with PDL allowed where
// pdl_enabled().
template <typename... Params, typename... Args>
cudaError_t launch_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                            unsigned cluster_x, Args&&... args) {
  cudaLaunchAttribute attr[2] = {};
  unsigned n = 0;
  if (cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

// launch_clusters without clusters: the launch every kernel goes through.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  return launch_clusters(kernel, grid, block, smem, stream, 1u, std::forward<Args>(args)...);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Element access by run-time dtype (F32, F16, BF16): for the cheap element-wise kernels.
__device__ __forceinline__ float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_f32(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case DType::F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

// Compile-time element types for the templated kernels.
template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// Loads 8 consecutive elements (16 bytes for 16-bit types, 2 x 16 bytes for f32) as floats.
// p must be aligned to 8 elements.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* out) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float* out) {
  float4 a = reinterpret_cast<const float4*>(p)[0];
  float4 b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float* v) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store8(float* p, const float* v) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

}  // namespace gale::cuda
#endif  // __CUDACC__
