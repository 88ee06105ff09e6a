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
  // Optional: argmax_workspace_size(n) bytes, zeroed once before the first call (each call
  // leaves it zeroed again). With it a row is split over many blocks; without, one block a row.
  void* workspace = nullptr;
};

size_t argmax_workspace_size(int64_t n);
cudaError_t argmax(const ArgmaxParams& p, cudaStream_t stream);

}  // namespace gale::cuda
