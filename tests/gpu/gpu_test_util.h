// Helpers of the GPU kernel tests: device buffers, random data, error measures.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace gale::test {

inline bool has_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define GALE_REQUIRE_GPU() \
  if (!::gale::test::has_gpu()) GTEST_SKIP() << "no CUDA device"

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << cudaGetErrorString(call)

// Owns cudaMalloc-ed bytes; filled with 0xFF (NaN in f32/f16/bf16) so unwritten outputs show.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) p = nullptr;
    if (p) cudaMemset(p, 0xFF, n);
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
  template <typename T> T* as() const { return static_cast<T*>(p); }
  template <typename T> void upload(const std::vector<T>& v) {
    cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  template <typename T> std::vector<T> download(size_t n) const {
    std::vector<T> v(n);
    cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
};
template <typename T> DevBuf to_device(const std::vector<T>& v) {
  DevBuf b(v.size() * sizeof(T));
  b.upload(v);
  return b;
}

// A fresh seed per test (printed on failure): the kernels must compute the same function on any input.
inline uint32_t fresh_seed() {
  static std::random_device rd;
  return rd();
}
inline std::vector<float> randn(size_t n, std::mt19937& g, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = d(g);
    if (x == 0.0f) x = 1e-3f;  // never zeros
  }
  return v;
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = f32_to_bf16(v[i]);
  return o;
}
inline std::vector<float> bf16_to_f32v(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = bf16_to_f32(v[i]);
  return o;
}
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}
// Uploads host floats as dtype (F32 or BF16) and returns the values the device really holds.
inline std::vector<float> upload_as(DevBuf& b, const std::vector<float>& v, DType t) {
  if (t == DType::F32) {
    b.upload(v);
    return v;
  }
  auto h = to_bf16(v);
  b.upload(h);
  return bf16_to_f32v(h);
}

// Downloads n elements of dtype F32 or BF16 as floats.
inline std::vector<float> download_f32(const DevBuf& b, DType t, size_t n) {
  if (t == DType::F32) return b.download<float>(n);
  return bf16_to_f32v(b.download<uint16_t>(n));
}

// ‖out − ref‖ / ‖ref‖ in double; any NaN/Inf in out makes it infinite.
inline double rel_err(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    double d = double(out[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

// Tolerance by output/arithmetic precision (see /work/.library/device/METHOD.md habits).
inline double tol_for(DType out) { return out == DType::F32 ? 2e-5 : 6e-3; }

}  // namespace gale::test
