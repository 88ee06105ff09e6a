// Backend::sample_rows of the CUDA backend: the rows' parameters and penalty lists go up in one
// packed pinned copy, kernels/cuda/sample.cu draws every row's token where the logits are, and
// only the ids come back.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "model/backend.h"
#include "model/cuda/cuda_buffers.h"

namespace gale {

class CudaSampling {
 public:
  CudaSampling() = default;
  ~CudaSampling();
  CudaSampling(const CudaSampling&) = delete;
  CudaSampling& operator=(const CudaSampling&) = delete;

  // Queues, on `stream`, out[r] = the token drawn from f32 logit row r (device memory) with
  // rows[r], and returns: out must be pinned host memory, valid until the caller has waited on
  // the stream. The rows' lists are packed before it returns. The logits get the rows'
  // penalties in place. Throws gale::Error on a CUDA failure or a row outside the kernel's
  // ranges.
  void launch(Act logits, std::span<const RowSampling> rows, int32_t* out, cudaStream_t stream);

 private:
  // Grown on demand, reused across steps: the host side pinned (one copy of the whole pack).
  GrowBuffer host_, dev_;
  cudaEvent_t uploaded_ = nullptr;  // the last pack left host_ (created on first use)
};

}  // namespace gale
