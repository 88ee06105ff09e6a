// Weighted row scatter-add: dst[rows[i], :] += weight[i] * src[i, :] (the MoE combine: an
// expert's outputs added into the residual stream with the router weights). Rows must be
// distinct within one call (no atomics); dst is f32.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct ScatterAddRowsParams {
  const void* src;        // [n, cols] row stride lds, src_dtype (F32 or BF16)
  int64_t lds;
  DType src_dtype;
  const int32_t* rows;    // [n] destination row of each source row, distinct
  const float* weight;    // [n]
  float* dst;             // [*, cols] row stride ldd
  int64_t ldd;
  int64_t n, cols;
};

cudaError_t scatter_add_rows(const ScatterAddRowsParams& p, cudaStream_t stream);

}  // namespace gale::cuda
