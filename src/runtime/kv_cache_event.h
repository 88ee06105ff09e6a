// What the prefix cache tells the outside about its blocks, as plain values: a router that keeps
// a map of which replica holds which prefix (NVIDIA Dynamo's KV router, llm-d's scorer) follows
// these (the publisher of `--kv-events` encodes and sends them: src/kv_events). Mirrors vLLM's
// BlockStored / BlockRemoved / AllBlocksCleared.
//
// Block hashes are chained: a block's hash covers its parent's hash and its own tokens, so equal
// hashes mean equal prefixes from the first token (what routers index). Device-free.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace gale {

// Where a cached block's K/V is (vLLM's `medium`): the device's KV pool, or the host tier.
enum class KvCacheMedium : uint8_t { Device, Host };

struct KvCacheEvent {
  enum class Kind : uint8_t {
    Stored,   // blocks entered the cache: a chain, parent first (each block the next one's parent)
    Removed,  // blocks left the cache (any order)
    Cleared,  // every block left the cache
  };
  Kind kind = Kind::Stored;
  KvCacheMedium medium = KvCacheMedium::Device;
  std::vector<uint64_t> block_hashes;   // Stored, Removed
  std::optional<uint64_t> parent_hash;  // Stored: the block before the first one (none: the prompt's first block)
  std::vector<int32_t> token_ids;       // Stored: block_size tokens per hash, in order
  int64_t block_size = 0;               // Stored: tokens per block
};

// Called on the thread that drives the cache (the engine's), in the order things happened. It
// must not block: the engine waits for it.
using KvCacheEventSink = std::function<void(KvCacheEvent&&)>;

// The chained hash of a block: a 64-bit mix of the parent block's hash (kKvRootHash for a first
// block) and the block's tokens. Deterministic across processes and runs, so replicas serving the
// same model give the same prefix the same hashes.
inline constexpr uint64_t kKvRootHash = 0x9e3779b97f4a7c15ull;
uint64_t kv_block_hash(uint64_t parent_hash, const int32_t* tokens, int64_t n);

}  // namespace gale
