#include "model/backend.h"

#include <algorithm>

#include "core/error.h"
#include "model/cpu_backend.h"

namespace gale {

#ifdef GALE_HAVE_CUDA
// model/cuda/cuda_backend.cpp
std::unique_ptr<Backend> make_cuda_backend(int device, double gpu_memory_utilization);
int cuda_device_count();
#endif

void Backend::sample_rows(Act, std::span<const RowSampling>, int32_t*) {
  throw Error("sampling on the device is not available on " + name());
}

void Backend::launch_argmax_rows(Act logits) {
  launched_ids_.resize(size_t(logits.rows));
  argmax_rows(logits, launched_ids_.data());
}

void Backend::launch_sample_rows(Act logits, std::span<const RowSampling> rows) {
  launched_ids_.resize(size_t(logits.rows));
  sample_rows(logits, rows, launched_ids_.data());
}

void Backend::wait_ids(int32_t* out) {
  std::copy(launched_ids_.begin(), launched_ids_.end(), out);
}

std::unique_ptr<Backend> make_backend(const BackendOptions& o) {
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
    return make_cuda_backend(index, o.gpu_memory_utilization);
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
