// The conversions around the FP8 products: activations to E4M3 with one scale per row (the
// W8A8 GEMM's dynamic per-token quantization) and FP8 weights back to bf16 (the prefill
// fallback where cuBLASLt has no kernel for a weight's scale layout).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

// q[m, k] = e4m3(x[m, k] / scale[m]) with scale[m] = max(amax(x[m, :]), tiny) / 448 (round to
// nearest even, saturating): the per-token rule of vLLM's and TensorRT-LLM's dynamic FP8. With
// group G > 0, one scale per G columns of a row instead (DeepSeek-V3's 1 x 128 activation
// groups, what cuBLASLt's VEC128 scale mode multiplies): scale[m * ceil(K / G) + k / G].
struct QuantizeRowsFp8Params {
  const void* x;   // [M, K] bf16, row stride ldx
  int64_t ldx;
  void* q;         // [M, K] E4M3, row stride ldq
  int64_t ldq;
  float* scale;    // [M], or [M, ceil(K / group)] with a group
  int64_t M, K;
  int64_t group = 0;  // 0: one scale per row
};
cudaError_t quantize_rows_fp8(const QuantizeRowsFp8Params& p, cudaStream_t stream);

// out[n * groups + g] = sw[n * ws_ld] for n < N, g < groups: a per-row weight scale repeated over
// the row's 1 x 128 groups, the layout cuBLASLt's VEC128 scale mode reads for A.
cudaError_t expand_row_scales(const float* sw, int64_t ws_ld, int64_t N, int64_t groups, float* out,
                              cudaStream_t stream);

// y[r, k] = bf16(W[r0 + r, k] · scale(r0 + r, k)) for r < n, the scale grid as in GemmParams
// (w_scale[(row / ws_rows) * ws_ld + k / ws_cols]).
struct DequantizeFp8Params {
  const void* w;   // E4M3 rows of K, row stride ldw
  int64_t ldw;
  const float* scale;
  int64_t ws_rows, ws_cols, ws_ld;
  int64_t r0, n, K;
  void* y;         // [n, K] bf16, row stride ldy
  int64_t ldy;
};
cudaError_t dequantize_fp8(const DequantizeFp8Params& p, cudaStream_t stream);

// The W8A8 product's outer scales applied after an unscaled FP8 product (where cuBLASLt has no
// outer-vector scale mode for the shape): y[m, n] = d[m, n] · sw[n · ws_ld] · sx[m] (+ y[m, n]
// when accumulating), y bf16 or f32.
struct ScaleOuterParams {
  const float* d;   // [M, N] f32, row stride ldd
  int64_t ldd;
  const float* sw;  // W's row scales, stride ws_ld
  int64_t ws_ld;
  const float* sx;  // x's row scales [M]
  void* y;
  int64_t ldy;
  DType y_dtype;
  int64_t M, N;
  bool accumulate;
};
cudaError_t scale_outer(const ScaleOuterParams& p, cudaStream_t stream);

}  // namespace gale::cuda
