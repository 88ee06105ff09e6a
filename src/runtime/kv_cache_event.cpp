#include "runtime/kv_cache_event.h"

namespace gale {

namespace {
// splitmix64's finalizer: every input bit reaches every output bit.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}
}  // namespace

uint64_t kv_block_hash(uint64_t parent_hash, const int32_t* tokens, int64_t n) {
  uint64_t h = mix64(parent_hash ^ uint64_t(n));
  for (int64_t i = 0; i < n; ++i) h = mix64(h ^ uint64_t(uint32_t(tokens[i])) ^ (uint64_t(i) << 32));
  return h;
}

}  // namespace gale
