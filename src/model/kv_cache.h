// Paged KV storage: per layer, K and V of num_blocks blocks of block_size tokens.
// Which block belongs to which sequence is the runtime's business (block tables).
#pragma once
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "loader/model_config.h"

namespace gale {

class Backend;

// The --kv-cache-dtype spelling of a cache dtype: "f32", "bf16" or "fp8" (F8_E4M3).
inline const char* kv_cache_dtype_name(DType t) {
  return t == DType::F8_E4M3 ? "fp8" : t == DType::BF16 ? "bf16" : t == DType::F32 ? "f32" : "?";
}

// How a cache stores K and V: F32, BF16, or F8_E4M3 with one f32 scale per layer for K and one
// for V (per tensor: stored = e4m3(x / scale), read = stored * scale). The scales are fixed
// for the cache's lifetime (the model's, Transformer::kv_format), so a block means the same
// values whichever sequence wrote it: shared prefix blocks, copy-on-write and recompute after
// preemption need nothing else.
struct KVFormat {
  DType dtype = DType::F32;
  std::vector<float> k_scale, v_scale;  // [num_layers] for F8_E4M3, empty otherwise
};

class KVCache {
 public:
  // The blocks live in the backend's memory (host memory for nullptr or a CPU backend, GPU
  // memory for the CUDA backend); throws gale::Error when they do not fit, or for a format
  // other than F32, BF16 or F8_E4M3 with a positive finite scale for each of cfg's layers.
  KVCache(const ModelConfig& cfg, int64_t num_blocks, int64_t block_size, KVFormat format, Backend* backend = nullptr);
  // F32 or BF16.
  KVCache(const ModelConfig& cfg, int64_t num_blocks, int64_t block_size, DType dtype, Backend* backend = nullptr)
      : KVCache(cfg, num_blocks, block_size, KVFormat{dtype, {}, {}}, backend) {}
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  void* k(int64_t layer) { return base_ + size_t(2 * layer) * layer_bytes_; }
  void* v(int64_t layer) { return base_ + size_t(2 * layer + 1) * layer_bytes_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  DType dtype() const { return format_.dtype; }
  const KVFormat& format() const { return format_; }
  // Dequantization scales of layer l (1 unless F8_E4M3).
  float k_scale(int64_t layer) const { return format_.k_scale.empty() ? 1.0f : format_.k_scale[size_t(layer)]; }
  float v_scale(int64_t layer) const { return format_.v_scale.empty() ? 1.0f : format_.v_scale[size_t(layer)]; }
  // The backend whose memory holds the blocks (nullptr: host memory).
  const Backend* device() const { return device_; }
  size_t bytes() const { return total_bytes_; }
  // Copies block src's K and V into block dst in every layer (copy-on-write of a shared block).
  void copy_block(int32_t src, int32_t dst);
  // The host tier (--host-kv-cache): room for n blocks in host memory (pinned on CUDA: the
  // backend's alloc_host), laid out like the cache's own. Prefix-cache blocks evicted from the
  // device are copied there and back (runtime/prefix_cache.h decides which). Call once.
  void set_host_tier(int64_t num_host_blocks);
  int64_t num_host_blocks() const { return num_host_blocks_; }
  // Bytes one block occupies across all layers (K and V): the host tier's unit.
  size_t bytes_per_block() const { return block_bytes_ * size_t(2 * num_layers_); }
  // (device block, host slot) pairs: copies the blocks' K and V of every layer to the host slots,
  // or back. Issued on the backend's stream (Backend::copy_to_host_async): ordered with the
  // forwards around them, not waited for. Runs of consecutive blocks and slots go as one copy.
  void copy_to_host(std::span<const std::pair<int32_t, int32_t>> block_slot);
  void copy_from_host(std::span<const std::pair<int32_t, int32_t>> block_slot);
  // Bytes one token occupies across all layers (K and V): F8_E4M3 half of BF16.
  static size_t bytes_per_token(const ModelConfig& cfg, DType dtype);
  // Tokens the cache holds (num_blocks * block_size).
  int64_t capacity_tokens() const { return num_blocks_ * block_size_; }

 private:
  int64_t num_blocks_, block_size_;
  KVFormat format_;
  int64_t num_layers_ = 0;
  size_t layer_bytes_ = 0, block_bytes_ = 0, total_bytes_ = 0;
  uint8_t* base_ = nullptr;
  Backend* device_ = nullptr;  // owner of base_ when not host memory
  int64_t num_host_blocks_ = 0;
  uint8_t* host_base_ = nullptr;  // [2 * num_layers][num_host_blocks] blocks; device_'s alloc_host or mmap
  size_t host_bytes_ = 0;
  template <bool kToHost>
  void copy_host(std::span<const std::pair<int32_t, int32_t>> block_slot);
};

}  // namespace gale
