// The CUDA backend's factory (model/cuda/cuda_backend.cpp); only CUDA builds compile it.
#pragma once
#include <memory>

#include "model/backend.h"

namespace gale {

// The backend on CUDA device `device`, taking at most `gpu_memory_utilization` of its memory.
std::unique_ptr<Backend> make_cuda_backend(int device, double gpu_memory_utilization);
// CUDA devices visible to this process (0 when none or no driver).
int cuda_device_count();

}  // namespace gale
