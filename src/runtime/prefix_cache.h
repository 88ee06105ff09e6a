// Prefix cache: a radix tree over full KV blocks (SGLang's RadixAttention, in block units).
//
// Each node below the root is one full block: block_size token ids and the pool block that holds
// their K/V, under the node of the block before it. The cache keeps one pool reference per node;
// sequences that use a cached block hold their own. A node whose pool ref count is 1 is held by
// the cache alone and may be evicted, leaves first, least recently used first.
//
// Invariant: a sequence holding a node's block also holds every ancestor's block (it matched or
// inserted the whole path; insert() swaps a duplicate block for the cached one). So a node held by
// the cache alone has only such nodes below it, and every one of them can be evicted.
//
// Events (runtime/kv_cache_event.h): with a sink set, every block that enters the cache is told
// (one Stored event per insert() that adds blocks, each with its chained hash), every block that
// leaves it (one Removed event per evict() that frees any), and clear() emptying it (Cleared).
//
// Host tier (set_host_tier, --host-kv-cache; SGLang HiCache's idea): a block evicted from the
// device pool is kept in a host slot instead of dropped (a spill), its node staying in the tree;
// a later match through it brings it back into a fresh device block (a load). The copies are
// only decided here: take_host_copies() hands them to the caller, which runs spills before loads
// before the step's forward. Host nodes are always below device nodes (a node is spilled only
// once nothing below it is on the device), so the host nodes of a path are a suffix of it. The
// host tier has its own LRU: when full, a spill drops the least recently used host leaf.
// Events name the tier (KvCacheMedium): a spill is Removed (device) then Stored (host), a load
// the reverse.
//
// Knows ids and token counts only, never tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "runtime/block_pool.h"
#include "runtime/kv_cache_event.h"

namespace gale {

class PrefixCache {
 public:
  PrefixCache(BlockPool& pool, int64_t block_size);
  ~PrefixCache();  // releases the cache's references
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  static constexpr int32_t kRoot = 0;

  struct Match {
    int32_t node = kRoot;           // deepest full-block node matched (cursor for the next call)
    std::vector<int32_t> blocks;    // full cached blocks, retained for the caller
    int32_t partial_block = -1;     // block sharing the next partial_tokens tokens, retained; -1 none
    int64_t partial_tokens = 0;     // < block_size: copy-on-write source at the divergence point
    int64_t host_blocks = 0;        // the last host_blocks of `blocks` were loaded from the host tier
  };
  // Longest cached prefix of `tokens` (which start at block `from`'s first token, `from` being the
  // node's depth), looking at no more than `limit` tokens. Touches the matched path (LRU).
  Match match(int32_t from, std::span<const int32_t> tokens, int64_t limit);

  // Caches the full blocks blocks[first, last) of a sequence whose block first-1 is node `from`
  // (kRoot when first == 0); tokens covers blocks [first, last). Where the same tokens are cached
  // already under another block, blocks[i] is swapped for the cached block (the caller's own is
  // released, the cached one retained). Returns the node of block last-1.
  int32_t insert(int32_t from, std::span<const int32_t> tokens, std::span<int32_t> blocks);

  // The node of the block before `node`'s (kRoot for a first block). A sequence holding node's
  // block holds the whole path, so every node on it stays live.
  int32_t parent(int32_t node) const;

  // Frees up to n unreferenced cached device blocks (LRU leaves first; with a host tier they are
  // spilled there); returns how many were freed.
  int64_t evict(int64_t n);
  // Blocks that evict() could free right now.
  int64_t num_evictable() const;
  int64_t num_cached_blocks() const { return num_nodes_ - num_host_nodes_; }  // on the device

  // The host tier: room for n blocks (n > 0; call before the first insert()).
  void set_host_tier(int64_t num_host_blocks);
  int64_t num_host_cached_blocks() const { return num_host_nodes_; }
  struct HostCopy {
    int32_t block = 0, slot = 0;  // device block, host slot
  };
  // The copies decided since the last call: spills (device -> host) to run first, then loads
  // (host -> device), both before the next forward. Host slots emptied by loads are free again
  // only after this call, so a spill never overwrites a slot a load of the same batch still reads.
  void take_host_copies(std::vector<HostCopy>& spills, std::vector<HostCopy>& loads);
  int64_t num_spilled_blocks() const { return num_spilled_; }  // since the start
  int64_t num_loaded_blocks() const { return num_loaded_; }
  // Drops every unreferenced block (all of them when no sequence holds any): a Cleared event
  // when the cache is empty afterwards, else a Removed event for what left.
  void clear();

  // Where events go (none by default). Set before the first insert(): a router must see a
  // block stored before it sees it removed.
  void set_event_sink(KvCacheEventSink sink) { sink_ = std::move(sink); }
  // The chained hash of `node`'s block (what its events name).
  uint64_t block_hash(int32_t node) const;

 private:
  struct Node {
    std::vector<int32_t> tokens;     // block_size ids; empty for the root and free slots
    int32_t block = -1;              // device block; -1 while on the host tier
    int32_t slot = -1;               // host slot while on the host tier, else -1
    bool pinned = false;             // on a path match() is loading: not to be dropped
    int32_t parent = -1;
    std::vector<int32_t> children;   // node ids
    uint64_t last_access = 0;
    uint64_t hash = kKvRootHash;     // chained over the path's tokens (kv_block_hash)
    bool live = false;
  };
  int32_t new_node();
  int32_t find_child(int32_t node, std::span<const int32_t> block_tokens) const;
  void remove_leaf(int32_t id);
  bool on_host(int32_t id) const { return nodes_[size_t(id)].slot >= 0; }
  bool has_device_child(int32_t id) const;
  // Device eviction: refcount 1, nothing below on the device.
  bool device_evictable(int32_t id) const;
  // Moves a device-evictable node's block to a host slot (false: no slot could be had).
  bool spill(int32_t id, std::vector<uint64_t>& host_stored);
  // Drops a node and everything below it (host nodes only below): hashes to removed_host.
  void drop_host_subtree(int32_t id, std::vector<uint64_t>& removed_host);
  // host_leaves_ bookkeeping: unlist before a node's last_access, tier or children change, relist after.
  void unlist(int32_t id) { host_leaves_.erase({nodes_[size_t(id)].last_access, id}); }
  void relist(int32_t id) {
    const Node& n = nodes_[size_t(id)];
    if (n.live && n.slot >= 0 && n.children.empty()) host_leaves_.insert({n.last_access, id});
  }
  // A free host slot, dropping the LRU unpinned host leaf when none is free; -1 when none can be had.
  int32_t take_host_slot(std::vector<uint64_t>& removed_host);
  void emit_hashes(KvCacheEvent::Kind kind, KvCacheMedium medium, std::vector<uint64_t>& hashes);
  void emit_stored(const std::vector<int32_t>& chain, KvCacheMedium medium);  // nodes, parent first
  struct Eviction {
    std::vector<uint64_t> removed, removed_host;  // hashes of blocks that left the device / the host tier
    std::vector<int32_t> spilled;                 // nodes moved to the host tier
  };
  // Frees up to n device blocks (LRU device leaves), spilling them when asked and a host tier is
  // set; what happened goes to ev, for emit_eviction().
  int64_t evict_leaves(int64_t n, Eviction& ev, bool spill_to_host);
  void emit_eviction(Eviction& ev);

  BlockPool& pool_;
  int64_t block_size_;
  std::vector<Node> nodes_;
  std::vector<int32_t> free_nodes_;
  int64_t num_nodes_ = 0;  // live nodes below the root
  uint64_t clock_ = 0;
  KvCacheEventSink sink_;
  std::unique_ptr<BlockPool> host_pool_;   // host slots (ref count 1 while a node holds one)
  // Host nodes without children, oldest access first: what a full tier drops. (A host node's
  // children are host nodes, and it gains none: a spill or a load never puts a device node
  // under a host one.)
  std::set<std::pair<uint64_t, int32_t>> host_leaves_;
  int64_t num_host_nodes_ = 0;
  std::vector<HostCopy> spills_, loads_;   // decided, not yet taken
  std::vector<int32_t> slots_to_free_;     // emptied by loads_: free after take_host_copies()
  int64_t num_spilled_ = 0, num_loaded_ = 0;
};

}  // namespace gale
