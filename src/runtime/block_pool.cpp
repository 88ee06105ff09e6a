#include "runtime/block_pool.h"

#include "core/error.h"

namespace gale {

BlockPool::BlockPool(int64_t n) : ref_(size_t(n), 0) {
  free_.reserve(size_t(n));
  for (int64_t i = n - 1; i >= 0; --i) free_.push_back(int32_t(i));  // hand out low ids first
}

bool BlockPool::allocate(int64_t n, std::vector<int32_t>& out) {
  if (n > int64_t(free_.size())) return false;
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = free_.back();
    free_.pop_back();
    ref_[size_t(id)] = 1;
    out.push_back(id);
  }
  return true;
}

void BlockPool::retain(int32_t id) {
  GALE_ASSERT(ref_[size_t(id)] > 0);
  ++ref_[size_t(id)];
}

void BlockPool::release(int32_t id) {
  GALE_ASSERT(ref_[size_t(id)] > 0);
  if (--ref_[size_t(id)] == 0) free_.push_back(id);
}

}  // namespace gale
