#include "model/cuda/cuda_sampling.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.h"
#include "kernels/cuda/sample.cuh"

namespace gale {

namespace {

// Lists a row sends: a penalty that is off needs none (a long prompt would cost a copy per token).
bool uses_seen(const RowSampling& r) { return r.repetition_penalty != 1.0f; }
bool uses_outputs(const RowSampling& r) { return r.presence_penalty != 0.0f || r.frequency_penalty != 0.0f; }

size_t align8(size_t n) { return (n + 7) & ~size_t(7); }

}  // namespace

CudaSampling::~CudaSampling() {
  if (uploaded_) {
    cudaEventSynchronize(uploaded_);
    cudaEventDestroy(uploaded_);
  }
  cudaFree(dev_.p);
  cudaFreeHost(host_.p);
}

void CudaSampling::launch(Act logits, std::span<const RowSampling> rows, int32_t* out, cudaStream_t stream) {
  GALE_ASSERT(logits.dtype == DType::F32 && size_t(logits.rows) == rows.size());
  const int64_t n = logits.rows;
  if (n == 0) return;
  const int64_t mask_words = (logits.cols + 31) / 32;
  int64_t n_seen = 0, n_out = 0, n_masked = 0;
  for (const RowSampling& r : rows) {
    GALE_ASSERT(r.output_ids.size() == r.output_counts.size());
    if (uses_seen(r)) n_seen += int64_t(r.seen_ids.size());
    if (uses_outputs(r)) n_out += int64_t(r.output_ids.size());
    if (!r.allowed.empty()) {
      if (int64_t(r.allowed.size()) != mask_words) throw Error("sampling: a token mask's size does not fit the vocabulary");
      ++n_masked;
    }
  }
  if (n_seen > INT32_MAX || n_out > INT32_MAX) throw Error("sampling: penalty lists too long for the device");
  // Packed layout: rows[n] | seen_ids[n_seen] | output_ids[n_out] | output_counts[n_out] |
  // masks[n_masked * mask_words] | out[n] (device only). Only the masks of constrained rows
  // cross (vocab / 8 bytes each), never the logits.
  const size_t rows_bytes = size_t(n) * sizeof(cuda::SampleRow);
  const size_t seen_at = rows_bytes, out_ids_at = seen_at + size_t(n_seen) * 4,
               counts_at = out_ids_at + size_t(n_out) * 4, masks_at = counts_at + size_t(n_out) * 4,
               up_bytes = masks_at + size_t(n_masked * mask_words) * 4, result_at = align8(up_bytes),
               dev_bytes = result_at + size_t(n) * 4;
  // The previous pack must have left the pinned buffer before it is refilled (the engine waits
  // for every step's ids anyway, so this costs nothing there).
  if (!uploaded_) cuda_check(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming), "cudaEventCreate");
  cuda_check(cudaEventSynchronize(uploaded_), "sampling upload");
  grow_pinned(host_, up_bytes);
  grow_cuda_malloc(dev_, dev_bytes);
  auto* h = static_cast<uint8_t*>(host_.p);
  auto* h_rows = reinterpret_cast<cuda::SampleRow*>(h);
  auto* h_seen = reinterpret_cast<int32_t*>(h + seen_at);
  auto* h_out_ids = reinterpret_cast<int32_t*>(h + out_ids_at);
  auto* h_counts = reinterpret_cast<int32_t*>(h + counts_at);
  auto* h_masks = reinterpret_cast<uint32_t*>(h + masks_at);
  int32_t seen_off = 0, out_off = 0;
  int64_t mask_off = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const RowSampling& r = rows[i];
    cuda::SampleRow s;
    s.temperature = r.temperature;
    s.top_k = r.top_k;
    s.top_p = r.top_p;
    s.min_p = r.min_p;
    s.repetition_penalty = r.repetition_penalty;
    s.presence_penalty = r.presence_penalty;
    s.frequency_penalty = r.frequency_penalty;
    s.u = r.u;
    if (uses_seen(r)) {
      s.seen_off = seen_off;
      s.n_seen = int32_t(r.seen_ids.size());
      std::memcpy(h_seen + seen_off, r.seen_ids.data(), r.seen_ids.size_bytes());
      seen_off += s.n_seen;
    }
    if (uses_outputs(r)) {
      s.output_off = out_off;
      s.n_output = int32_t(r.output_ids.size());
      std::memcpy(h_out_ids + out_off, r.output_ids.data(), r.output_ids.size_bytes());
      std::memcpy(h_counts + out_off, r.output_counts.data(), r.output_counts.size_bytes());
      out_off += s.n_output;
    }
    if (!r.allowed.empty()) {
      s.mask_off = mask_off;
      std::memcpy(h_masks + mask_off, r.allowed.data(), r.allowed.size_bytes());
      mask_off += mask_words;
    }
    if (!cuda::sample_row_valid(s, n_seen, n_out) || !cuda::sample_mask_valid(s, logits.cols, n_masked * mask_words))
      throw Error("sampling: parameters of row " + std::to_string(i) + " are out of range");
    h_rows[i] = s;
  }
  auto* d = static_cast<uint8_t*>(dev_.p);
  cuda_check(cudaMemcpyAsync(d, h, up_bytes, cudaMemcpyHostToDevice, stream), "sampling upload");
  cuda_check(cudaEventRecord(uploaded_, stream), "sampling upload");
  cuda::SampleParams p{};
  p.logits = logits.f32();
  p.ld = logits.ld;
  p.n = n;
  p.vocab = logits.cols;
  p.rows = reinterpret_cast<const cuda::SampleRow*>(d);
  p.seen_ids = reinterpret_cast<const int32_t*>(d + seen_at);
  p.n_seen_ids = n_seen;
  p.output_ids = reinterpret_cast<const int32_t*>(d + out_ids_at);
  p.output_counts = reinterpret_cast<const int32_t*>(d + counts_at);
  p.n_output_ids = n_out;
  p.masks = reinterpret_cast<const uint32_t*>(d + masks_at);
  p.n_mask_words = n_masked * mask_words;
  p.out = reinterpret_cast<int32_t*>(d + result_at);
  cuda_check(cuda::sample(p, stream), "sample");
  cuda_check(cudaMemcpyAsync(out, p.out, size_t(n) * 4, cudaMemcpyDeviceToHost, stream), "copy to host");
}

}  // namespace gale
