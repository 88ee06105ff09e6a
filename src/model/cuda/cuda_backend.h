// The CUDA backend's factory (the class is cuda_backend_impl.h, implemented by cuda_backend.cpp,
// cuda_weights.cpp and cuda_step_graphs.cpp); only CUDA builds compile it.
#pragma once
#include <memory>

#include "model/backend.h"
#include "model/cuda/cuda_options.h"

namespace gale {

// The backend on CUDA device `options.device`, taking at most `options.gpu_memory_utilization`
// of its memory, with the switches of `options` (the kernels' among them: they are process-wide).
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options);
// CUDA devices visible to this process (0 when none or no driver).
int cuda_device_count();

}  // namespace gale
