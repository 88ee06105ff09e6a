// The E4M3 KV cache's element access, shared by the kernels that write it (kv_cache_write,
// rope_kv_write) and read it (decode_attention, prefill_attention). The cache holds
// e4m3(x / scale) with one scale per layer for K and for V (kernels/ref/attention_ref.h); the
// writers divide exactly as the reference does, so the stored bytes are the reference's, and the
// readers widen exactly (every E4M3 value is a bf16 and an f16) and apply the scale in f32.
#pragma once
#include "kernels/cuda/common.cuh"

#ifdef __CUDACC__
#include <cuda_fp8.h>

namespace gale::cuda {

// One K/V element into a cache of dtype t: F32 / BF16 as store_f32, F8_E4M3 as x / scale
// rounded to nearest even, saturating at ±448 (f32_to_f8e4m3 of core/dtype.h).
__device__ __forceinline__ void store_kv(void* cache, DType t, int64_t i, float x, float scale) {
  if (t == DType::F8_E4M3)
    static_cast<__nv_fp8_storage_t*>(cache)[i] = __nv_cvt_float_to_fp8(__fdiv_rn(x, scale), __NV_SATFINITE, __NV_E4M3);
  else
    store_f32(cache, t, i, x);
}

// Two E4M3 values (the low byte first) as floats, exactly.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint16_t v) {
  const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(v), __NV_E4M3);
  return __half22float2(__half2(r));
}

// 8 consecutive E4M3 values (8 bytes, as one uint2) as floats.
__device__ __forceinline__ void widen8_e4m3(uint2 u, float* out) {
  const uint32_t w[2] = {u.x, u.y};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float2 a = e4m3x2_to_float2(uint16_t(w[i] & 0xffffu)), b = e4m3x2_to_float2(uint16_t(w[i] >> 16));
    out[4 * i] = a.x;
    out[4 * i + 1] = a.y;
    out[4 * i + 2] = b.x;
    out[4 * i + 3] = b.y;
  }
}

}  // namespace gale::cuda
#endif  // __CUDACC__
