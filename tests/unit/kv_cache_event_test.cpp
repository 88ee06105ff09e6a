// The prefix cache's events (runtime/kv_cache_event.h) as a router sees them: blocks stored with
// chained hashes and their parent, removed on eviction, cleared; in the order things happened.
// No model, no tensors.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/block_pool.h"
#include "runtime/prefix_cache.h"
#include "runtime/scheduler.h"

using namespace gale;

namespace {

constexpr int64_t kBs = 4;
using Kind = KvCacheEvent::Kind;

std::vector<int32_t> tokens_from(std::initializer_list<std::pair<int, int>> runs) {  // (start, count) runs
  std::vector<int32_t> t;
  for (auto [start, n] : runs)
    for (int i = 0; i < n; ++i) t.push_back(start + i);
  return t;
}

uint64_t hash_of(uint64_t parent, const std::vector<int32_t>& t, size_t block) {
  return kv_block_hash(parent, t.data() + block * kBs, kBs);
}

TEST(KvCacheEvents, StoredRemovedClearedInOrderWithChainedHashes) {
  BlockPool pool(16);
  PrefixCache cache(pool, kBs);
  std::vector<KvCacheEvent> ev;
  cache.set_event_sink([&](KvCacheEvent&& e) { ev.push_back(std::move(e)); });

  // A: three full blocks, all new.
  std::vector<int32_t> ta = tokens_from({{0, 12}}), a;
  ASSERT_TRUE(pool.allocate(3, a));
  int32_t a_leaf = cache.insert(PrefixCache::kRoot, ta, a);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::Stored);
  EXPECT_EQ(ev[0].medium, KvCacheMedium::Device);
  EXPECT_FALSE(ev[0].parent_hash.has_value());  // the prompt's first block has no parent
  EXPECT_EQ(ev[0].token_ids, ta);
  EXPECT_EQ(ev[0].block_size, kBs);
  const uint64_t a0 = hash_of(kKvRootHash, ta, 0), a1 = hash_of(a0, ta, 1), a2 = hash_of(a1, ta, 2);
  EXPECT_EQ(ev[0].block_hashes, (std::vector<uint64_t>{a0, a1, a2}));
  EXPECT_EQ(cache.block_hash(a_leaf), a2);

  // B shares A's first two blocks: only its third is stored, under A's second.
  std::vector<int32_t> tb = tokens_from({{0, 8}, {100, 4}}), b;
  ASSERT_TRUE(pool.allocate(3, b));
  cache.insert(PrefixCache::kRoot, tb, b);  // b[0], b[1] swapped for A's cached blocks
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].kind, Kind::Stored);
  ASSERT_TRUE(ev[1].parent_hash.has_value());
  EXPECT_EQ(*ev[1].parent_hash, a1);
  EXPECT_EQ(ev[1].token_ids, tokens_from({{100, 4}}));
  const uint64_t b2 = hash_of(a1, tb, 2);
  EXPECT_EQ(ev[1].block_hashes, (std::vector<uint64_t>{b2}));
  EXPECT_NE(b2, a2);

  // The same blocks again: nothing new, no event.
  std::vector<int32_t> a_again;
  ASSERT_TRUE(pool.allocate(1, a_again));
  cache.insert(PrefixCache::kRoot, std::span<const int32_t>(ta).first(4), a_again);
  EXPECT_EQ(ev.size(), 2u);
  pool.release(a_again[0]);

  // The sequences finish; eviction frees the least recently used leaf first: A's third block
  // (B's insert touched blocks 0-1 and its own third one after A's).
  for (int32_t x : a) pool.release(x);
  for (int32_t x : b) pool.release(x);
  EXPECT_EQ(cache.evict(1), 1);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[2].kind, Kind::Removed);
  EXPECT_EQ(ev[2].block_hashes, (std::vector<uint64_t>{a2}));

  // Two more: B's third, then A's second (a leaf now).
  EXPECT_EQ(cache.evict(2), 2);
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[3].kind, Kind::Removed);
  EXPECT_EQ(ev[3].block_hashes, (std::vector<uint64_t>{b2, a1}));

  // Clear empties the cache: one Cleared event, nothing listed.
  cache.clear();
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[4].kind, Kind::Cleared);
  EXPECT_TRUE(ev[4].block_hashes.empty());
  EXPECT_EQ(cache.num_cached_blocks(), 0);
  EXPECT_EQ(pool.num_free(), 16);
}

TEST(KvCacheEvents, ClearWithABlockInUseRemovesTheRestOnly) {
  BlockPool pool(8);
  PrefixCache cache(pool, kBs);
  std::vector<KvCacheEvent> ev;
  cache.set_event_sink([&](KvCacheEvent&& e) { ev.push_back(std::move(e)); });
  std::vector<int32_t> t = tokens_from({{7, 8}}), blocks;
  ASSERT_TRUE(pool.allocate(2, blocks));
  cache.insert(PrefixCache::kRoot, t, blocks);
  pool.release(blocks[1]);  // the sequence keeps its first block only (as after a rollback)
  cache.clear();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].kind, Kind::Removed);  // the first block is still cached: not "all cleared"
  EXPECT_EQ(ev[1].block_hashes, (std::vector<uint64_t>{hash_of(hash_of(kKvRootHash, t, 0), t, 1)}));
  EXPECT_EQ(cache.num_cached_blocks(), 1);
  pool.release(blocks[0]);
}

TEST(KvCacheEvents, HashesNameThePrefixNotTheBlock) {
  // The same tokens at another depth, or after another parent, hash differently; the same
  // prefix in another cache (another replica) hashes the same.
  std::vector<int32_t> t = tokens_from({{1, 4}, {1, 4}});
  const uint64_t h0 = hash_of(kKvRootHash, t, 0), h1 = hash_of(h0, t, 1);
  EXPECT_NE(h0, h1);
  std::vector<int32_t> swapped = {2, 1, 3, 4};
  EXPECT_NE(kv_block_hash(kKvRootHash, swapped.data(), kBs), h0);

  BlockPool p1(4), p2(4);
  PrefixCache c1(p1, kBs), c2(p2, kBs);
  std::vector<int32_t> b1, b2, other;
  ASSERT_TRUE(p1.allocate(2, b1));
  ASSERT_TRUE(p2.allocate(1, other));  // so the second pool hands out other block ids
  ASSERT_TRUE(p2.allocate(2, b2));
  ASSERT_NE(b1, b2);
  EXPECT_EQ(c1.block_hash(c1.insert(PrefixCache::kRoot, t, b1)), c2.block_hash(c2.insert(PrefixCache::kRoot, t, b2)));
  for (int32_t x : b1) p1.release(x);
  for (int32_t x : b2) p2.release(x);
  p2.release(other[0]);
}

TEST(KvCacheEvents, SchedulerEvictionIsTold) {
  // A pool of 4 blocks: the second prompt needs the first one's cached blocks back.
  SchedulerConfig sc;
  sc.num_blocks = 4;
  sc.block_size = kBs;
  sc.max_num_batched_tokens = 64;
  Scheduler s(sc);
  std::vector<KvCacheEvent> ev;
  s.set_kv_event_sink([&](KvCacheEvent&& e) { ev.push_back(std::move(e)); });
  auto run = [&](uint64_t id, std::vector<int32_t> prompt) {
    s.add(id, std::move(prompt));
    SchedulerOutput out = s.schedule();
    ASSERT_EQ(out.seqs.size(), 1u);
    s.commit(out);
    s.finish(id);
  };
  run(1, tokens_from({{0, 13}}));    // 3 full blocks cached, a 4th partial
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::Stored);
  EXPECT_EQ(ev[0].block_hashes.size(), 3u);
  run(2, tokens_from({{50, 13}}));   // shares nothing: evicts all three
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[1].kind, Kind::Removed);
  EXPECT_EQ(ev[1].block_hashes.size(), 3u);
  EXPECT_EQ(ev[2].kind, Kind::Stored);
  EXPECT_EQ(ev[2].token_ids, tokens_from({{50, 12}}));
}

}  // namespace
