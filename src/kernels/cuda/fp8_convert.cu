#include "kernels/cuda/fp8_convert.cuh"

#include <cuda_fp8.h>

namespace gale::cuda {

namespace {

constexpr int kThreads = 256;

// One block per row: the row's amax, then its values divided by the scale.
__global__ void __launch_bounds__(kThreads) quantize_rows_fp8_kernel(QuantizeRowsFp8Params p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t m = blockIdx.x;
  const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(p.x) + m * p.ldx;
  __nv_fp8_storage_t* q = static_cast<__nv_fp8_storage_t*>(p.q) + m * p.ldq;
  float amax = 0.0f;
  for (int64_t k = threadIdx.x; k < p.K; k += kThreads) amax = fmaxf(amax, fabsf(__bfloat162float(x[k])));
  __shared__ float part[kThreads / 32];
  amax = warp_max(amax);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = amax;
  __syncthreads();
  float a = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) a = fmaxf(a, part[w]);
  // A zero row gets a tiny scale (its values stay 0).
  const float scale = fmaxf(a, 1e-12f) / kF8E4M3Max;
  const float inv = 1.0f / scale;
  if (threadIdx.x == 0) p.scale[m] = scale;
  for (int64_t k = threadIdx.x; k < p.K; k += kThreads)
    q[k] = __nv_cvt_float_to_fp8(__bfloat162float(x[k]) * inv, __NV_SATFINITE, __NV_E4M3);
}

// One block per row, one warp per group of columns at a time.
__global__ void __launch_bounds__(kThreads) quantize_groups_fp8_kernel(QuantizeRowsFp8Params p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t m = blockIdx.x, groups = (p.K + p.group - 1) / p.group;
  const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(p.x) + m * p.ldx;
  __nv_fp8_storage_t* q = static_cast<__nv_fp8_storage_t*>(p.q) + m * p.ldq;
  const int lane = threadIdx.x % 32;
  for (int64_t g = threadIdx.x / 32; g < groups; g += kThreads / 32) {
    const int64_t k0 = g * p.group, k1 = min(p.K, k0 + p.group);
    float amax = 0.0f;
    for (int64_t k = k0 + lane; k < k1; k += 32) amax = fmaxf(amax, fabsf(__bfloat162float(x[k])));
    amax = warp_max(amax);
    const float scale = fmaxf(amax, 1e-12f) / kF8E4M3Max;
    const float inv = 1.0f / scale;
    if (lane == 0) p.scale[m * groups + g] = scale;
    for (int64_t k = k0 + lane; k < k1; k += 32)
      q[k] = __nv_cvt_float_to_fp8(__bfloat162float(x[k]) * inv, __NV_SATFINITE, __NV_E4M3);
  }
}

__global__ void __launch_bounds__(kThreads) expand_row_scales_kernel(const float* sw, int64_t ws_ld, int64_t N,
                                                                      int64_t groups, float* out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < N * groups) out[i] = sw[i / groups * ws_ld];
}

__global__ void __launch_bounds__(kThreads) dequantize_fp8_kernel(DequantizeFp8Params p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t r = blockIdx.x, row = p.r0 + r;
  const __nv_fp8_storage_t* w = static_cast<const __nv_fp8_storage_t*>(p.w) + row * p.ldw;
  const float* s = p.scale + row / p.ws_rows * p.ws_ld;
  __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y) + r * p.ldy;
  for (int64_t k = threadIdx.x; k < p.K; k += kThreads) {
    const float v = __half2float(__half(__nv_cvt_fp8_to_halfraw(w[k], __NV_E4M3)));
    y[k] = __float2bfloat16_rn(v * s[k / p.ws_cols]);
  }
}

// One block per output row m; threads stride over n.
__global__ void __launch_bounds__(kThreads) scale_outer_kernel(ScaleOuterParams p) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t m = blockIdx.x;
  const float* d = p.d + m * p.ldd;
  const float sx = p.sx[m];
  if (p.y_dtype == DType::F32) {
    float* y = static_cast<float*>(p.y) + m * p.ldy;
    for (int64_t n = threadIdx.x; n < p.N; n += kThreads) {
      const float v = d[n] * p.sw[n * p.ws_ld] * sx;
      y[n] = p.accumulate ? y[n] + v : v;
    }
  } else {
    __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y) + m * p.ldy;
    for (int64_t n = threadIdx.x; n < p.N; n += kThreads) {
      const float v = d[n] * p.sw[n * p.ws_ld] * sx;
      y[n] = __float2bfloat16_rn(p.accumulate ? __bfloat162float(y[n]) + v : v);
    }
  }
}

}  // namespace

cudaError_t scale_outer(const ScaleOuterParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (!p.d || !p.sw || !p.sx || !p.y || p.ldd < p.N || p.ldy < p.N ||
      (p.y_dtype != DType::F32 && p.y_dtype != DType::BF16))
    return cudaErrorInvalidValue;
  return launch(scale_outer_kernel, unsigned(p.M), kThreads, 0, stream, p);
}

cudaError_t quantize_rows_fp8(const QuantizeRowsFp8Params& p, cudaStream_t stream) {
  if (p.M <= 0 || p.K <= 0) return cudaSuccess;
  if (p.ldx < p.K || p.ldq < p.K || !p.scale || p.group < 0) return cudaErrorInvalidValue;
  if (p.group > 0) return launch(quantize_groups_fp8_kernel, unsigned(p.M), kThreads, 0, stream, p);
  return launch(quantize_rows_fp8_kernel, unsigned(p.M), kThreads, 0, stream, p);
}

cudaError_t expand_row_scales(const float* sw, int64_t ws_ld, int64_t N, int64_t groups, float* out,
                              cudaStream_t stream) {
  if (N <= 0 || groups <= 0) return cudaSuccess;
  if (!sw || !out || ws_ld < 0) return cudaErrorInvalidValue;
  const int64_t n = N * groups;
  expand_row_scales_kernel<<<unsigned((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(sw, ws_ld, N, groups, out);
  return cudaGetLastError();
}

cudaError_t dequantize_fp8(const DequantizeFp8Params& p, cudaStream_t stream) {
  if (p.n <= 0 || p.K <= 0) return cudaSuccess;
  if (p.ldy < p.K || p.ldw < p.K || !p.scale || p.ws_rows < 1 || p.ws_cols < 1) return cudaErrorInvalidValue;
  return launch(dequantize_fp8_kernel, unsigned(p.n), kThreads, 0, stream, p);
}

}  // namespace gale::cuda
