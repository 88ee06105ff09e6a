#include "runtime/prefix_cache.h"

#include <algorithm>
#include <queue>

#include "core/error.h"

namespace gale {

PrefixCache::PrefixCache(BlockPool& pool, int64_t block_size) : pool_(pool), block_size_(block_size) {
  GALE_ASSERT(block_size > 0);
  nodes_.emplace_back();  // the root: no tokens, no block
  nodes_[0].live = true;
}

PrefixCache::~PrefixCache() {
  for (Node& n : nodes_)
    if (n.live && n.block >= 0) pool_.release(n.block);
}

void PrefixCache::set_host_tier(int64_t num_host_blocks) {
  GALE_ASSERT(num_host_blocks > 0 && !host_pool_ && num_nodes_ == 0);
  host_pool_ = std::make_unique<BlockPool>(num_host_blocks);
}

int32_t PrefixCache::new_node() {
  if (!free_nodes_.empty()) {
    int32_t id = free_nodes_.back();
    free_nodes_.pop_back();
    return id;
  }
  nodes_.emplace_back();
  return int32_t(nodes_.size() - 1);
}

// Children are a short list scanned linearly: fan-out is the number of distinct continuations
// of one block, small except at a shared system prompt's end.
int32_t PrefixCache::find_child(int32_t node, std::span<const int32_t> block_tokens) const {
  for (int32_t c : nodes_[size_t(node)].children) {
    const std::vector<int32_t>& t = nodes_[size_t(c)].tokens;
    if (t[0] == block_tokens[0] && std::equal(t.begin(), t.end(), block_tokens.begin())) return c;
  }
  return -1;
}

void PrefixCache::emit_hashes(KvCacheEvent::Kind kind, KvCacheMedium medium, std::vector<uint64_t>& hashes) {
  if (!sink_ || hashes.empty()) return;
  KvCacheEvent e;
  e.kind = kind;
  e.medium = medium;
  e.block_hashes = std::move(hashes);
  hashes.clear();
  sink_(std::move(e));
}

void PrefixCache::emit_stored(const std::vector<int32_t>& chain, KvCacheMedium medium) {
  if (!sink_ || chain.empty()) return;
  KvCacheEvent e;
  e.kind = KvCacheEvent::Kind::Stored;
  e.medium = medium;
  e.block_size = block_size_;
  const int32_t parent = nodes_[size_t(chain[0])].parent;
  if (parent != kRoot) e.parent_hash = nodes_[size_t(parent)].hash;
  for (int32_t id : chain) {
    const Node& n = nodes_[size_t(id)];
    e.block_hashes.push_back(n.hash);
    e.token_ids.insert(e.token_ids.end(), n.tokens.begin(), n.tokens.end());
  }
  sink_(std::move(e));
}

PrefixCache::Match PrefixCache::match(int32_t from, std::span<const int32_t> tokens, int64_t limit) {
  Match m;
  m.node = from;
  const uint64_t now = ++clock_;
  limit = std::min<int64_t>(limit, int64_t(tokens.size()));
  int64_t pos = 0;
  std::vector<int32_t> host_path;  // matched nodes on the host tier: a suffix of the path
  int32_t at = from;
  while (limit - pos >= block_size_) {
    int32_t c = find_child(at, tokens.subspan(size_t(pos), size_t(block_size_)));
    if (c < 0) break;
    Node& n = nodes_[size_t(c)];
    if (on_host(c)) {
      unlist(c);
      n.last_access = now;
      relist(c);
      n.pinned = true;
      host_path.push_back(c);
    } else {
      n.last_access = now;
      GALE_ASSERT(host_path.empty());
      pool_.retain(n.block);
      m.blocks.push_back(n.block);
      m.node = c;
    }
    at = c;
    pos += block_size_;
  }
  if (!host_path.empty()) {
    // Bring the host blocks back into fresh device blocks, as many as the pool gives (evicting,
    // and so spilling, other unreferenced blocks: the matched path is retained or pinned).
    const int64_t want = int64_t(host_path.size());
    if (pool_.num_free() < want) {
      Eviction ev;
      evict_leaves(want - pool_.num_free(), ev, /*spill_to_host=*/true);
      emit_eviction(ev);
    }
    std::vector<int32_t> got;
    const int64_t n_load = std::min<int64_t>(want, pool_.num_free());
    if (n_load > 0) GALE_ASSERT(pool_.allocate(n_load, got));
    std::vector<uint64_t> left_host;
    std::vector<int32_t> loaded;
    for (int64_t i = 0; i < n_load; ++i) {
      Node& n = nodes_[size_t(host_path[size_t(i)])];
      unlist(host_path[size_t(i)]);
      loads_.push_back({got[size_t(i)], n.slot});
      slots_to_free_.push_back(n.slot);
      n.slot = -1;
      n.block = got[size_t(i)];  // the cache's reference
      pool_.retain(n.block);     // the caller's
      m.blocks.push_back(n.block);
      m.node = host_path[size_t(i)];
      --num_host_nodes_;
      ++num_loaded_;
      left_host.push_back(n.hash);
      loaded.push_back(host_path[size_t(i)]);
    }
    m.host_blocks = n_load;
    for (int32_t id : host_path) nodes_[size_t(id)].pinned = false;
    emit_hashes(KvCacheEvent::Kind::Removed, KvCacheMedium::Host, left_host);
    emit_stored(loaded, KvCacheMedium::Device);
    pos = int64_t(m.blocks.size()) * block_size_;
  }
  // Divergence point: the device child sharing the longest run of the next tokens (fewer than a
  // block). Host children are not copied from: that would need a load for a partial block.
  const int64_t rest = std::min<int64_t>(limit - pos, block_size_);
  if (rest <= 0) return m;
  int64_t best = 0;
  int32_t best_node = -1;
  for (int32_t c : nodes_[size_t(m.node)].children) {
    if (on_host(c)) continue;
    const std::vector<int32_t>& t = nodes_[size_t(c)].tokens;
    int64_t k = 0;
    while (k < rest && t[size_t(k)] == tokens[size_t(pos + k)]) ++k;
    if (k > best) best = k, best_node = c;
  }
  if (best_node >= 0) {
    Node& n = nodes_[size_t(best_node)];
    n.last_access = now;
    pool_.retain(n.block);
    m.partial_block = n.block;
    m.partial_tokens = best;
  }
  return m;
}

int32_t PrefixCache::insert(int32_t from, std::span<const int32_t> tokens, std::span<int32_t> blocks) {
  GALE_ASSERT(int64_t(tokens.size()) >= int64_t(blocks.size()) * block_size_);
  const uint64_t now = ++clock_;
  int32_t node = from;
  // Nodes that are new or come back from the host with the caller's block: once one is, every
  // one after it is (host nodes and new ones are below it), so they form one chain.
  std::vector<int32_t> stored;
  std::vector<uint64_t> left_host;
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::span<const int32_t> bt = tokens.subspan(i * size_t(block_size_), size_t(block_size_));
    int32_t c = find_child(node, bt);
    if (c >= 0 && on_host(c)) {
      // The caller computed a block the host tier holds: its device block replaces the host copy.
      Node& n = nodes_[size_t(c)];
      unlist(c);
      host_pool_->release(n.slot);  // no load pending from it (a load moves the node to the device)
      n.slot = -1;
      n.block = blocks[i];
      pool_.retain(blocks[i]);
      --num_host_nodes_;
      left_host.push_back(n.hash);
      stored.push_back(c);
    } else if (c >= 0) {
      int32_t cached = nodes_[size_t(c)].block;
      if (cached != blocks[i]) {  // computed twice (two sequences at once): keep the cached copy
        pool_.retain(cached);
        pool_.release(blocks[i]);
        blocks[i] = cached;
      }
    } else {
      c = new_node();
      Node& n = nodes_[size_t(c)];
      n.tokens.assign(bt.begin(), bt.end());
      n.block = blocks[i];
      n.slot = -1;
      n.pinned = false;
      n.parent = node;
      n.children.clear();
      n.live = true;
      n.hash = kv_block_hash(nodes_[size_t(node)].hash, bt.data(), block_size_);
      pool_.retain(blocks[i]);
      nodes_[size_t(node)].children.push_back(c);
      ++num_nodes_;
      stored.push_back(c);
    }
    nodes_[size_t(c)].last_access = now;
    node = c;
  }
  emit_hashes(KvCacheEvent::Kind::Removed, KvCacheMedium::Host, left_host);
  emit_stored(stored, KvCacheMedium::Device);
  return node;
}

int32_t PrefixCache::parent(int32_t node) const {
  GALE_ASSERT(node != kRoot && nodes_[size_t(node)].live);
  return nodes_[size_t(node)].parent;
}

uint64_t PrefixCache::block_hash(int32_t node) const {
  GALE_ASSERT(node != kRoot && nodes_[size_t(node)].live);
  return nodes_[size_t(node)].hash;
}

void PrefixCache::remove_leaf(int32_t id) {
  Node& n = nodes_[size_t(id)];
  GALE_ASSERT(n.children.empty() && id != kRoot);
  unlist(id);
  auto& sib = nodes_[size_t(n.parent)].children;
  sib.erase(std::find(sib.begin(), sib.end(), id));
  relist(n.parent);  // a host parent may be a leaf now
  if (n.slot >= 0) {
    host_pool_->release(n.slot);
    --num_host_nodes_;
  } else {
    pool_.release(n.block);
  }
  n.live = false;
  n.block = -1;
  n.slot = -1;
  n.tokens.clear();
  free_nodes_.push_back(id);
  --num_nodes_;
}

bool PrefixCache::has_device_child(int32_t id) const {
  for (int32_t c : nodes_[size_t(id)].children)
    if (!on_host(c)) return true;
  return false;
}

bool PrefixCache::device_evictable(int32_t id) const {
  const Node& n = nodes_[size_t(id)];
  return id != kRoot && n.live && n.block >= 0 && pool_.ref_count(n.block) == 1 && !has_device_child(id);
}

void PrefixCache::drop_host_subtree(int32_t id, std::vector<uint64_t>& removed_host) {
  while (!nodes_[size_t(id)].children.empty()) drop_host_subtree(nodes_[size_t(id)].children.back(), removed_host);
  if (on_host(id)) removed_host.push_back(nodes_[size_t(id)].hash);
  remove_leaf(id);
}

int32_t PrefixCache::take_host_slot(std::vector<uint64_t>& removed_host) {
  std::vector<int32_t> slot;
  if (host_pool_->allocate(1, slot)) return slot[0];
  // Full: drop the least recently used host leaf that no match is loading.
  int32_t victim = -1;
  for (const auto& [access, id] : host_leaves_)
    if (!nodes_[size_t(id)].pinned) {
      victim = id;
      break;
    }
  if (victim < 0) return -1;
  removed_host.push_back(nodes_[size_t(victim)].hash);
  remove_leaf(victim);
  GALE_ASSERT(host_pool_->allocate(1, slot));
  return slot[0];
}

bool PrefixCache::spill(int32_t id, std::vector<uint64_t>& removed_host) {
  Node& node = nodes_[size_t(id)];
  // Loaded in this very batch (its sequence let it go again): the spill would run before the
  // load and copy a block not filled yet. Undo the load instead: the data is still in its slot.
  for (size_t i = 0; i < loads_.size(); ++i) {
    if (loads_[i].block != node.block) continue;
    const int32_t slot = loads_[i].slot;
    loads_.erase(loads_.begin() + std::ptrdiff_t(i));
    slots_to_free_.erase(std::find(slots_to_free_.begin(), slots_to_free_.end(), slot));
    pool_.release(node.block);
    node.block = -1;
    node.slot = slot;
    relist(id);
    ++num_host_nodes_;
    --num_loaded_;
    return true;
  }
  const int32_t slot = take_host_slot(removed_host);
  if (slot < 0) return false;
  Node& n = nodes_[size_t(id)];
  spills_.push_back({n.block, slot});
  pool_.release(n.block);  // free for the step: the spill runs before anything writes it
  n.block = -1;
  n.slot = slot;
  relist(id);
  ++num_host_nodes_;
  ++num_spilled_;
  return true;
}

int64_t PrefixCache::evict(int64_t want) {
  Eviction ev;
  const int64_t freed = evict_leaves(want, ev, /*spill_to_host=*/true);
  emit_eviction(ev);
  return freed;
}

void PrefixCache::emit_eviction(Eviction& ev) {
  if (!sink_) return;
  // A block spilled and then dropped from the host tier within the same eviction was never
  // there for a router to see: neither event.
  std::vector<int32_t> on_host_now;
  for (int32_t id : ev.spilled) {
    if (nodes_[size_t(id)].live && on_host(id)) {
      on_host_now.push_back(id);
    } else {
      auto it = std::find(ev.removed_host.begin(), ev.removed_host.end(), nodes_[size_t(id)].hash);
      if (it != ev.removed_host.end()) ev.removed_host.erase(it);
    }
  }
  emit_hashes(KvCacheEvent::Kind::Removed, KvCacheMedium::Device, ev.removed);
  emit_hashes(KvCacheEvent::Kind::Removed, KvCacheMedium::Host, ev.removed_host);
  // Each spilled block is its own Stored (host) event: spills go leaves first, so a block's
  // parent may follow it.
  for (int32_t id : on_host_now) emit_stored({id}, KvCacheMedium::Host);
}

void PrefixCache::clear() {
  // Everything unreferenced goes, the host tier included (nothing is spilled).
  Eviction ev;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!nodes_[i].live || on_host(int32_t(i))) continue;
    std::vector<int32_t> host_children;
    for (int32_t c : nodes_[i].children)
      if (on_host(c)) host_children.push_back(c);
    for (int32_t c : host_children) drop_host_subtree(c, ev.removed_host);
  }
  evict_leaves(num_nodes_, ev, /*spill_to_host=*/false);
  if (!sink_) return;
  if (num_nodes_ == 0) {
    KvCacheEvent e;
    e.kind = KvCacheEvent::Kind::Cleared;
    sink_(std::move(e));
    return;
  }
  emit_eviction(ev);
}

int64_t PrefixCache::evict_leaves(int64_t want, Eviction& ev, bool spill_to_host) {
  using Item = std::pair<uint64_t, int32_t>;  // (last_access, node): oldest first
  std::priority_queue<Item, std::vector<Item>, std::greater<>> heap;
  for (size_t i = 1; i < nodes_.size(); ++i)
    if (device_evictable(int32_t(i))) heap.push({nodes_[i].last_access, int32_t(i)});
  int64_t freed = 0;
  while (freed < want && !heap.empty()) {
    int32_t id = heap.top().second;
    heap.pop();
    int32_t parent = nodes_[size_t(id)].parent;
    ev.removed.push_back(nodes_[size_t(id)].hash);
    if (spill_to_host && host_pool_ && spill(id, ev.removed_host)) ev.spilled.push_back(id);
    else drop_host_subtree(id, ev.removed_host);  // what hangs below (host only) goes with it
    ++freed;
    if (device_evictable(parent)) heap.push({nodes_[size_t(parent)].last_access, parent});
  }
  return freed;
}

int64_t PrefixCache::num_evictable() const {
  int64_t n = 0;
  for (size_t i = 1; i < nodes_.size(); ++i)
    if (nodes_[i].live && nodes_[i].block >= 0 && pool_.ref_count(nodes_[i].block) == 1) ++n;
  return n;
}

void PrefixCache::take_host_copies(std::vector<HostCopy>& spills, std::vector<HostCopy>& loads) {
  spills.insert(spills.end(), spills_.begin(), spills_.end());
  loads.insert(loads.end(), loads_.begin(), loads_.end());
  spills_.clear();
  loads_.clear();
  for (int32_t s : slots_to_free_) host_pool_->release(s);
  slots_to_free_.clear();
}

}  // namespace gale
