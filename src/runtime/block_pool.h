// Fixed-size KV blocks: a free list with reference counts. Knows ids only, never tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace gale {

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);
  int64_t num_blocks() const { return int64_t(ref_.size()); }
  int64_t num_free() const { return int64_t(free_.size()); }
  // Takes n blocks (ref count 1 each); false and nothing taken when fewer are free.
  bool allocate(int64_t n, std::vector<int32_t>& out);
  void retain(int32_t id);
  void release(int32_t id);  // back on the free list when the count drops to 0
  int32_t ref_count(int32_t id) const { return ref_[size_t(id)]; }

 private:
  std::vector<int32_t> ref_;
  std::vector<int32_t> free_;
};

}  // namespace gale
