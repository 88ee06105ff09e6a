// The radix prefix cache on its own: matching, copy-on-write sources, dedup, LRU eviction,
// reference counts. No model, no tensors.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/block_pool.h"
#include "runtime/prefix_cache.h"

using namespace gale;

namespace {

constexpr int64_t kBs = 4;

std::vector<int32_t> iota_tokens(int n, int start = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), start);
  return t;
}

// A "sequence" that allocated blocks for tokens and cached its full ones.
struct Seq {
  std::vector<int32_t> tokens, blocks;
  int32_t node = PrefixCache::kRoot;
};

Seq cache_seq(BlockPool& pool, PrefixCache& cache, std::vector<int32_t> tokens) {
  Seq s;
  s.tokens = std::move(tokens);
  const int64_t full = int64_t(s.tokens.size()) / kBs;
  EXPECT_TRUE(pool.allocate((int64_t(s.tokens.size()) + kBs - 1) / kBs, s.blocks));
  s.node = cache.insert(PrefixCache::kRoot, s.tokens, std::span<int32_t>(s.blocks).first(size_t(full)));
  return s;
}

void release(BlockPool& pool, std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) pool.release(b);
  blocks.clear();
}

TEST(PrefixCache, MatchesFullBlocksThenPartialAtDivergence) {
  BlockPool pool(16);
  PrefixCache cache(pool, kBs);
  Seq a = cache_seq(pool, cache, iota_tokens(12));  // 3 full blocks
  EXPECT_EQ(cache.num_cached_blocks(), 3);
  for (int32_t b : a.blocks) EXPECT_EQ(pool.ref_count(b), 2);  // the sequence's and the cache's

  // Shares 9 tokens: two full blocks, then 1 token of the third.
  std::vector<int32_t> q = iota_tokens(9);
  q.push_back(100);
  q.push_back(101);
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, q, int64_t(q.size()) - 1);
  ASSERT_EQ(m.blocks.size(), 2u);
  EXPECT_EQ(m.blocks[0], a.blocks[0]);
  EXPECT_EQ(m.blocks[1], a.blocks[1]);
  EXPECT_EQ(m.partial_block, a.blocks[2]);
  EXPECT_EQ(m.partial_tokens, 1);
  EXPECT_EQ(pool.ref_count(a.blocks[0]), 3);  // retained for the caller
  EXPECT_EQ(pool.ref_count(a.blocks[2]), 3);

  // The limit stops matching: the whole 12-token prompt may reuse 11 tokens at most.
  PrefixCache::Match all = cache.match(PrefixCache::kRoot, a.tokens, 11);
  EXPECT_EQ(all.blocks.size(), 2u);
  EXPECT_EQ(all.partial_tokens, 3);

  // No common first token: nothing.
  std::vector<int32_t> other = {50, 51, 52, 53, 54};
  PrefixCache::Match none = cache.match(PrefixCache::kRoot, other, 4);
  EXPECT_TRUE(none.blocks.empty());
  EXPECT_EQ(none.partial_block, -1);
}

TEST(PrefixCache, InsertSwapsADuplicateForTheCachedBlock) {
  BlockPool pool(16);
  PrefixCache cache(pool, kBs);
  Seq a = cache_seq(pool, cache, iota_tokens(8));
  std::vector<int32_t> own;
  ASSERT_TRUE(pool.allocate(2, own));
  const int32_t own0 = own[0];
  cache.insert(PrefixCache::kRoot, a.tokens, own);  // computed the same blocks again
  EXPECT_EQ(own, a.blocks);
  EXPECT_EQ(pool.ref_count(own0), 0);  // the duplicate went back to the free list
  EXPECT_EQ(cache.num_cached_blocks(), 2);
  release(pool, own);
  release(pool, a.blocks);
  EXPECT_EQ(pool.num_free(), 16 - 2);
  EXPECT_EQ(cache.num_evictable(), 2);
  cache.clear();
  EXPECT_EQ(pool.num_free(), 16);
}

TEST(PrefixCache, EvictsLeastRecentlyUsedLeavesFirstAndNeverHeldBlocks) {
  BlockPool pool(32);
  PrefixCache cache(pool, kBs);
  // Three chains sharing their first block: root -> x -> {a, b, c}.
  std::vector<int32_t> base = iota_tokens(4);
  auto chain = [&](int32_t tag) {
    std::vector<int32_t> t = base;
    for (int i = 0; i < 4; ++i) t.push_back(tag + i);
    return t;
  };
  Seq a = cache_seq(pool, cache, chain(100));
  Seq b = cache_seq(pool, cache, chain(200));
  Seq c = cache_seq(pool, cache, chain(300));
  EXPECT_EQ(cache.num_cached_blocks(), 4);  // x once, three leaves
  EXPECT_EQ(pool.ref_count(a.blocks[0]), 4);
  release(pool, a.blocks);
  release(pool, b.blocks);
  // c still runs: its two blocks are not evictable; x and the leaves of a and b are.
  EXPECT_EQ(cache.num_evictable(), 2);
  // Touch a: b's leaf is now the least recently used.
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, chain(100), 8);
  release(pool, m.blocks);
  const int64_t free_before = pool.num_free();
  EXPECT_EQ(cache.evict(1), 1);
  EXPECT_EQ(pool.num_free(), free_before + 1);
  PrefixCache::Match mb = cache.match(PrefixCache::kRoot, chain(200), 8);
  EXPECT_EQ(mb.blocks.size(), 1u);  // b's leaf is gone, x remains
  release(pool, mb.blocks);
  PrefixCache::Match ma = cache.match(PrefixCache::kRoot, chain(100), 8);
  EXPECT_EQ(ma.blocks.size(), 2u);
  release(pool, ma.blocks);
  // Everything evictable goes; c's held blocks stay.
  EXPECT_EQ(cache.evict(100), 1);
  EXPECT_EQ(cache.num_cached_blocks(), 2);
  for (int32_t blk : c.blocks) EXPECT_EQ(pool.ref_count(blk), 2);
  release(pool, c.blocks);
  cache.clear();
  EXPECT_EQ(cache.num_cached_blocks(), 0);
  EXPECT_EQ(pool.num_free(), 32);
}

TEST(PrefixCache, DestructorReleasesItsReferences) {
  BlockPool pool(8);
  {
    PrefixCache cache(pool, kBs);
    Seq a = cache_seq(pool, cache, iota_tokens(10));
    release(pool, a.blocks);
    EXPECT_EQ(pool.num_free(), 8 - 2);
  }
  EXPECT_EQ(pool.num_free(), 8);
}

}  // namespace
