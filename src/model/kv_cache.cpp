#include "model/kv_cache.h"

#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "model/backend.h"

namespace gale {

size_t KVCache::bytes_per_token(const ModelConfig& cfg, DType dtype) {
  return size_t(2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim) * dtype_size(dtype);
}

KVCache::KVCache(const ModelConfig& cfg, int64_t num_blocks, int64_t block_size, KVFormat format, Backend* backend)
    : num_blocks_(num_blocks), block_size_(block_size), format_(std::move(format)) {
  const DType dtype = format_.dtype;
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F8_E4M3)
    throw Error("KV cache dtype must be f32, bf16 or F8_E4M3");
  if (dtype == DType::F8_E4M3) {
    if (format_.k_scale.size() != size_t(cfg.num_layers) || format_.v_scale.size() != size_t(cfg.num_layers))
      throw Error("an F8_E4M3 KV cache needs a K and a V scale for each of the " + std::to_string(cfg.num_layers) +
                  " layers");
    for (const std::vector<float>* sc : {&format_.k_scale, &format_.v_scale})
      for (float x : *sc)
        if (!(x > 0.0f) || !std::isfinite(x)) throw Error("KV cache scale " + std::to_string(x) + " is not positive and finite");
  } else {
    format_.k_scale.clear();
    format_.v_scale.clear();
  }
  num_layers_ = cfg.num_layers;
  block_bytes_ = size_t(block_size * cfg.num_kv_heads * cfg.head_dim) * dtype_size(dtype);  // [block_size, kv_heads, head_dim]
  layer_bytes_ = block_bytes_ * size_t(num_blocks);
  total_bytes_ = layer_bytes_ * size_t(2 * cfg.num_layers);
  if (backend && !backend->is_cpu()) {
    device_ = backend;
    base_ = static_cast<uint8_t*>(backend->alloc(total_bytes_ ? total_bytes_ : 1));
    return;
  }
  // Anonymous mapping: pages are committed on first touch, so a generous cache costs
  // only what the sequences actually fill.
  void* p = ::mmap(nullptr, total_bytes_ ? total_bytes_ : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw Error("cannot allocate " + std::to_string(total_bytes_ >> 20) + " MiB for the KV cache");
  base_ = static_cast<uint8_t*>(p);
}

void KVCache::copy_block(int32_t src, int32_t dst) {
  GALE_ASSERT(src >= 0 && src < num_blocks_ && dst >= 0 && dst < num_blocks_);
  if (src == dst) return;
  for (int64_t i = 0; i < 2 * num_layers_; ++i) {
    uint8_t* layer = base_ + size_t(i) * layer_bytes_;
    if (device_) {
      device_->copy(layer + size_t(dst) * block_bytes_, layer + size_t(src) * block_bytes_, block_bytes_);
      continue;
    }
    std::memcpy(layer + size_t(dst) * block_bytes_, layer + size_t(src) * block_bytes_, block_bytes_);
  }
}

void KVCache::set_host_tier(int64_t n) {
  GALE_ASSERT(n > 0 && !host_base_);
  host_bytes_ = size_t(n) * bytes_per_block();
  if (device_) {
    host_base_ = static_cast<uint8_t*>(device_->alloc_host(host_bytes_));
  } else {
    void* p = ::mmap(nullptr, host_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error("cannot allocate " + std::to_string(host_bytes_ >> 20) + " MiB for the KV host tier");
    host_base_ = static_cast<uint8_t*>(p);
  }
  num_host_blocks_ = n;
}

template <bool kToHost>
void KVCache::copy_host(std::span<const std::pair<int32_t, int32_t>> block_slot) {
  const size_t host_layer_bytes = block_bytes_ * size_t(num_host_blocks_);
  for (size_t i = 0; i < block_slot.size();) {
    auto [block, slot] = block_slot[i];
    GALE_ASSERT(block >= 0 && block < num_blocks_ && slot >= 0 && slot < num_host_blocks_);
    size_t run = 1;  // consecutive blocks into consecutive slots: one copy per layer
    while (i + run < block_slot.size() && block_slot[i + run].first == block + int32_t(run) &&
           block_slot[i + run].second == slot + int32_t(run))
      ++run;
    const size_t bytes = run * block_bytes_;
    for (int64_t l = 0; l < 2 * num_layers_; ++l) {
      uint8_t* dev = base_ + size_t(l) * layer_bytes_ + size_t(block) * block_bytes_;
      uint8_t* host = host_base_ + size_t(l) * host_layer_bytes + size_t(slot) * block_bytes_;
      if (device_) {
        if constexpr (kToHost) device_->copy_to_host_async(host, dev, bytes);
        else device_->copy_from_host_async(dev, host, bytes);
      } else {
        if constexpr (kToHost) std::memcpy(host, dev, bytes);
        else std::memcpy(dev, host, bytes);
      }
    }
    i += run;
  }
}

void KVCache::copy_to_host(std::span<const std::pair<int32_t, int32_t>> block_slot) { copy_host<true>(block_slot); }
void KVCache::copy_from_host(std::span<const std::pair<int32_t, int32_t>> block_slot) { copy_host<false>(block_slot); }

KVCache::~KVCache() {
  if (host_base_) {
    if (device_) device_->release_host(host_base_, host_bytes_);
    else ::munmap(host_base_, host_bytes_);
  }
  if (device_) device_->release(base_, total_bytes_ ? total_bytes_ : 1);
  else if (base_) ::munmap(base_, total_bytes_ ? total_bytes_ : 1);
}

}  // namespace gale
