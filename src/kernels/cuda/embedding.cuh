// Embedding gather: out[t, :] = table[ids[t], :], widened to f32 or rounded to bf16.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct EmbeddingParams {
  const int32_t* ids;   // [n_tokens], each in [0, vocab); an id outside gives a row of NaN
  int64_t n_tokens;
  const void* table;    // [vocab, hidden] of table_dtype (F32, F16 or BF16), rows contiguous
  DType table_dtype;
  int64_t vocab, hidden;
  void* out;            // [n_tokens, hidden] of out_dtype (F32 or BF16), row stride ld_out
  DType out_dtype;
  int64_t ld_out;
};

cudaError_t embedding(const EmbeddingParams& p, cudaStream_t stream);

}  // namespace gale::cuda
