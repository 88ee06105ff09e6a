// Row gather: dst[i, :] = src[rows[i], :] (the MoE dispatch of tokens to an expert, and the
// rows whose logits are wanted). src and dst share one dtype (F32 or BF16).
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct GatherRowsParams {
  const void* src;        // [*, cols] row stride lds
  int64_t lds;
  const int32_t* rows;    // [n] source row of each destination row
  void* dst;              // [n, cols] row stride ldd
  int64_t ldd;
  DType dtype;            // F32 or BF16
  int64_t n, cols;
};

cudaError_t gather_rows(const GatherRowsParams& p, cudaStream_t stream);

}  // namespace gale::cuda
