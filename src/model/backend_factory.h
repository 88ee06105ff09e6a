// Choosing and constructing a backend from the user's options (--device, --dtype,
// --gpu-memory-utilization): the one place that knows every implementation.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "comm/comm.h"
#include "model/backend.h"
#include "model/cuda/cuda_options.h"

namespace gale {

struct BackendOptions {
  std::string device = "cpu";            // "cpu", "cuda" or "cuda:N"
  bool bf16_activations = false;         // CPU: --dtype bf16 (the GPU always runs bf16)
  double gpu_memory_utilization = 0.9;   // share of the card weights + activations + KV may take
  // The CUDA backend's switches (its device and memory share come from the fields above). Unset:
  // make_backend reads them from the environment (cuda_options_from_env) when it makes a CUDA
  // backend, so a CPU run never parses them.
  std::optional<CudaOptions> cuda;
  // The tensor-parallel group (--tp, launched by mpirun), or null: one rank. With more than one
  // rank, make_backend makes this rank's CpuTpBackend and load_model shards the weights; the
  // communicator must outlive the model.
  Communicator* tp = nullptr;
  // The pipeline (--pp): its rank is the stage; with more than one, make_backend makes a
  // CpuPipelineBackend and load_model keeps the stage's layers. Not with tp (yet).
  Communicator* pp = nullptr;
};

// Throws gale::Error when the device is unknown, absent, or this build has no CUDA backend, or a
// CUDA switch in the environment is malformed.
std::unique_ptr<Backend> make_backend(const BackendOptions& o);
// The default device: "cuda" when this build has CUDA and a GPU is present, else "cpu".
std::string default_device();

}  // namespace gale
