#include "model/cpu_tp_backend.h"

#include <cstring>

#include "core/error.h"

namespace gale {

std::string CpuTpBackend::name() const {
  return "cpu (tensor-parallel rank " + std::to_string(comm_.rank()) + " of " + std::to_string(comm_.size()) + ")";
}

// Every rank gets the same sum (MPI_Allreduce's result is the same on all ranks), so the
// residual streams of the ranks stay equal bit for bit and their next layers agree.
void CpuTpBackend::reduce_add(Act partial, Act x) {
  GALE_ASSERT(partial.dtype == DType::F32 && partial.ld == partial.cols);  // the transformer's scratch
  comm_.all_reduce_sum(partial.f32(), size_t(partial.rows * partial.cols));
  CpuBackend::reduce_add(partial, x);
}

void CpuTpBackend::all_gather_columns(Act part, Act full) {
  GALE_ASSERT(part.dtype == DType::F32 && full.dtype == DType::F32 && part.rows == full.rows);
  const int n = comm_.size();
  const int64_t rows = full.rows;
  GALE_ASSERT(shard_range(full.cols, comm_.rank(), n).count == part.cols);
  packed_.resize(size_t(rows * part.cols));
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(packed_.data() + r * part.cols, part.f32() + r * part.ld, size_t(part.cols) * sizeof(float));
  // Rank-major blocks [rank][rows][its columns], then each block's columns into place.
  std::vector<size_t> bytes(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) bytes[size_t(k)] = size_t(rows * shard_range(full.cols, k, n).count) * sizeof(float);
  gathered_cols_.resize(size_t(rows * full.cols));
  comm_.all_gather(packed_.data(), bytes, gathered_cols_.data());
  const float* block = gathered_cols_.data();
  for (int k = 0; k < n; ++k) {
    const ShardRange s = shard_range(full.cols, k, n);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(full.f32() + r * full.ld + s.begin, block + r * s.count, size_t(s.count) * sizeof(float));
    block += rows * s.count;
  }
}

}  // namespace gale

namespace gale {

std::string CpuPipelineBackend::name() const {
  return "cpu (pipeline stage " + std::to_string(comm_.rank()) + " of " + std::to_string(comm_.size()) + ")";
}

// x is the transformer's own contiguous f32 buffer (the residual stream or the logits).
void CpuPipelineBackend::send_to_stage(Act x, int stage) {
  GALE_ASSERT(x.dtype == DType::F32 && x.ld == x.cols);
  comm_.send(x.data, size_t(x.rows * x.cols) * sizeof(float), stage);
}

void CpuPipelineBackend::recv_from_stage(Act x, int stage) {
  GALE_ASSERT(x.dtype == DType::F32 && x.ld == x.cols);
  comm_.recv(x.data, size_t(x.rows * x.cols) * sizeof(float), stage);
}

}  // namespace gale
