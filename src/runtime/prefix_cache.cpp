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

PrefixCache::Match PrefixCache::match(int32_t from, std::span<const int32_t> tokens, int64_t limit) {
  Match m;
  m.node = from;
  const uint64_t now = ++clock_;
  limit = std::min<int64_t>(limit, int64_t(tokens.size()));
  int64_t pos = 0;
  while (limit - pos >= block_size_) {
    int32_t c = find_child(m.node, tokens.subspan(size_t(pos), size_t(block_size_)));
    if (c < 0) break;
    Node& n = nodes_[size_t(c)];
    n.last_access = now;
    pool_.retain(n.block);
    m.blocks.push_back(n.block);
    m.node = c;
    pos += block_size_;
  }
  // Divergence point: the child sharing the longest run of the next tokens (fewer than a block).
  const int64_t rest = std::min<int64_t>(limit - pos, block_size_);
  if (rest <= 0) return m;
  int64_t best = 0;
  int32_t best_node = -1;
  for (int32_t c : nodes_[size_t(m.node)].children) {
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
  KvCacheEvent stored;  // the new nodes: once one is new, every one after it is (its children)
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::span<const int32_t> bt = tokens.subspan(i * size_t(block_size_), size_t(block_size_));
    int32_t c = find_child(node, bt);
    if (c >= 0) {
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
      n.parent = node;
      n.children.clear();
      n.live = true;
      n.hash = kv_block_hash(nodes_[size_t(node)].hash, bt.data(), block_size_);
      if (sink_) {
        if (stored.block_hashes.empty() && node != kRoot) stored.parent_hash = nodes_[size_t(node)].hash;
        stored.block_hashes.push_back(n.hash);
        stored.token_ids.insert(stored.token_ids.end(), bt.begin(), bt.end());
      }
      pool_.retain(blocks[i]);
      nodes_[size_t(node)].children.push_back(c);
      ++num_nodes_;
    }
    nodes_[size_t(c)].last_access = now;
    node = c;
  }
  if (sink_ && !stored.block_hashes.empty()) {
    stored.kind = KvCacheEvent::Kind::Stored;
    stored.block_size = block_size_;
    sink_(std::move(stored));
  }
  return node;
}

int32_t PrefixCache::parent(int32_t node) const {
  GALE_ASSERT(node != kRoot && nodes_[size_t(node)].live);
  return nodes_[size_t(node)].parent;
}

void PrefixCache::remove_leaf(int32_t id) {
  Node& n = nodes_[size_t(id)];
  GALE_ASSERT(n.children.empty() && id != kRoot);
  auto& sib = nodes_[size_t(n.parent)].children;
  sib.erase(std::find(sib.begin(), sib.end(), id));
  pool_.release(n.block);
  n.live = false;
  n.block = -1;
  n.tokens.clear();
  free_nodes_.push_back(id);
  --num_nodes_;
}

uint64_t PrefixCache::block_hash(int32_t node) const {
  GALE_ASSERT(node != kRoot && nodes_[size_t(node)].live);
  return nodes_[size_t(node)].hash;
}

int64_t PrefixCache::evict(int64_t want) {
  std::vector<uint64_t> removed;
  const int64_t freed = evict_leaves(want, removed);
  if (sink_ && !removed.empty()) {
    KvCacheEvent e;
    e.kind = KvCacheEvent::Kind::Removed;
    e.block_hashes = std::move(removed);
    sink_(std::move(e));
  }
  return freed;
}

void PrefixCache::clear() {
  std::vector<uint64_t> removed;
  evict_leaves(num_nodes_, removed);
  if (!sink_) return;
  KvCacheEvent e;
  if (num_nodes_ == 0) {
    e.kind = KvCacheEvent::Kind::Cleared;
  } else if (!removed.empty()) {
    e.kind = KvCacheEvent::Kind::Removed;
    e.block_hashes = std::move(removed);
  } else {
    return;
  }
  sink_(std::move(e));
}

int64_t PrefixCache::evict_leaves(int64_t want, std::vector<uint64_t>& removed) {
  auto evictable_leaf = [&](int32_t id) {
    const Node& n = nodes_[size_t(id)];
    return id != kRoot && n.live && n.children.empty() && pool_.ref_count(n.block) == 1;
  };
  using Item = std::pair<uint64_t, int32_t>;  // (last_access, node): oldest first
  std::priority_queue<Item, std::vector<Item>, std::greater<>> heap;
  for (size_t i = 1; i < nodes_.size(); ++i)
    if (evictable_leaf(int32_t(i))) heap.push({nodes_[i].last_access, int32_t(i)});
  int64_t freed = 0;
  while (freed < want && !heap.empty()) {
    int32_t id = heap.top().second;
    heap.pop();
    int32_t parent = nodes_[size_t(id)].parent;
    removed.push_back(nodes_[size_t(id)].hash);
    remove_leaf(id);
    ++freed;
    if (evictable_leaf(parent)) heap.push({nodes_[size_t(parent)].last_access, parent});
  }
  return freed;
}

int64_t PrefixCache::num_evictable() const {
  int64_t n = 0;
  for (size_t i = 1; i < nodes_.size(); ++i)
    if (nodes_[i].live && pool_.ref_count(nodes_[i].block) == 1) ++n;
  return n;
}

}  // namespace gale
