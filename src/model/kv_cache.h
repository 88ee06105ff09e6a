// Paged KV storage: per layer, K and V of num_blocks blocks of block_size tokens.
// Which block belongs to which sequence is the runtime's business (block tables).
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "loader/model_config.h"

namespace gale {

class Backend;

class KVCache {
 public:
  // dtype: F32 or BF16. The blocks live in the backend's memory (host memory for nullptr or a
  // CPU backend, GPU memory for the CUDA backend); throws gale::Error when they do not fit.
  KVCache(const ModelConfig& cfg, int64_t num_blocks, int64_t block_size, DType dtype, Backend* backend = nullptr);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  void* k(int64_t layer) { return base_ + size_t(2 * layer) * layer_bytes_; }
  void* v(int64_t layer) { return base_ + size_t(2 * layer + 1) * layer_bytes_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  // The backend whose memory holds the blocks (nullptr: host memory).
  const Backend* device() const { return device_; }
  size_t bytes() const { return total_bytes_; }
  // Copies block src's K and V into block dst in every layer (copy-on-write of a shared block).
  void copy_block(int32_t src, int32_t dst);
  // Bytes one token occupies across all layers (K and V).
  static size_t bytes_per_token(const ModelConfig& cfg, DType dtype);

 private:
  int64_t num_blocks_, block_size_;
  DType dtype_;
  int64_t num_layers_ = 0;
  size_t layer_bytes_ = 0, block_bytes_ = 0, total_bytes_ = 0;
  uint8_t* base_ = nullptr;
  Backend* device_ = nullptr;  // owner of base_ when not host memory
};

}  // namespace gale
