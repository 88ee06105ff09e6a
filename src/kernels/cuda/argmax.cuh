// Greedy sampling building block: out[r] = index of the largest logit of row r, the first one
// on ties (as torch.argmax and runtime/sampler.cpp); NaN is never chosen over a number.
#pragma once
#include "kernels/cuda/common.cuh"

namespace gale::cuda {

struct ArgmaxParams {
  const void* logits;  // [n, vocab] row stride ld, dtype F32 or BF16
  DType dtype;
  int64_t ld, n, vocab;
  int32_t* out;        // [n]
};

cudaError_t argmax(const ArgmaxParams& p, cudaStream_t stream);

}  // namespace gale::cuda
