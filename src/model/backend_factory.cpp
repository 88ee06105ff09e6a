#include "model/backend_factory.h"

#include "core/error.h"
#include "model/cpu_backend.h"
#include "model/cpu_tp_backend.h"
#ifdef GALE_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

namespace gale {

std::unique_ptr<Backend> make_backend(const BackendOptions& o) {
  if (o.pp && o.pp->size() > 1) {
    if (o.tp && o.tp->size() > 1) throw Error("--tp with --pp is not implemented yet: use one of them");
    if (o.device != "cpu")
      throw Error("--pp on " + o.device + ": pipeline parallelism runs on the CPU for now; use --device cpu");
    return std::make_unique<CpuPipelineBackend>(o.bf16_activations, *o.pp);
  }
  if (o.tp && o.tp->size() > 1) {
    if (o.device != "cpu")
      throw Error("--tp on " + o.device + ": tensor parallelism runs on the CPU for now (the NCCL communicator of "
                  "the GPU backend is not written yet); use --device cpu");
    return std::make_unique<CpuTpBackend>(o.bf16_activations, *o.tp);
  }
  if (o.device == "cpu") return std::make_unique<CpuBackend>(o.bf16_activations);
  if (o.device.rfind("cuda", 0) == 0) {
    [[maybe_unused]] int index = 0;
    if (o.device.size() > 4) {
      if (o.device[4] != ':' || o.device.size() == 5 || o.device.size() > 9 ||
          o.device.find_first_not_of("0123456789", 5) != std::string::npos)
        throw Error("--device '" + o.device + "': expected cpu, cuda or cuda:N");
      index = std::stoi(o.device.substr(5));
    }
#ifdef GALE_HAVE_CUDA
    if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1))
      throw Error("--gpu-memory-utilization must be in (0, 1]");
    const int n = cuda_device_count();
    if (n == 0) throw Error("--device " + o.device + ": no CUDA GPU is visible");
    if (index >= n)
      throw Error("--device " + o.device + ": only " + std::to_string(n) + " CUDA GPU(s) are visible");
    CudaOptions c = o.cuda ? *o.cuda : cuda_options_from_env();
    c.device = index;
    c.gpu_memory_utilization = o.gpu_memory_utilization;
    return make_cuda_backend(c);
#else
    throw Error("--device " + o.device + ": this gale was built without CUDA (configure where nvcc is found)");
#endif
  }
  throw Error("--device '" + o.device + "': expected cpu, cuda or cuda:N");
}

std::string default_device() {
#ifdef GALE_HAVE_CUDA
  if (cuda_device_count() > 0) return "cuda";
#endif
  return "cpu";
}

}  // namespace gale
