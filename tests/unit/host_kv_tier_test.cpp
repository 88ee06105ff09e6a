// The prefix cache's host tier (--host-kv-cache): blocks evicted from the device pool are
// spilled to host slots instead of dropped and loaded back on a prefix hit; the copies are
// handed out spills first; the host tier has its own LRU; events name the tier. Then the Engine
// on the bundled model with a device pool too small to keep a prefix: the prefix comes back from
// the host tier, counted, and greedy outputs equal those of an engine without the tier.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "engine/engine.h"
#include "model/kv_cache.h"
#include "model/model_loader.h"
#include "runtime/block_pool.h"
#include "runtime/prefix_cache.h"

using namespace gale;

namespace {

constexpr int64_t kBs = 4;
using Kind = KvCacheEvent::Kind;

std::vector<int32_t> iota_tokens(int n, int start) {
  std::vector<int32_t> t(size_t(n), 0);
  std::iota(t.begin(), t.end(), start);
  return t;
}

// Inserts `tokens`' full blocks as a finished sequence would leave them: cached, unreferenced.
void cache_and_finish(BlockPool& pool, PrefixCache& cache, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> blocks;
  ASSERT_TRUE(pool.allocate(int64_t(tokens.size()) / kBs, blocks));
  cache.insert(PrefixCache::kRoot, tokens, blocks);
  for (int32_t b : blocks) pool.release(b);
}

TEST(HostKvTier, EvictionSpillsAndAHitLoadsBack) {
  BlockPool pool(4);
  PrefixCache cache(pool, kBs);
  cache.set_host_tier(8);
  std::vector<KvCacheEvent> ev;
  cache.set_event_sink([&](KvCacheEvent&& e) { ev.push_back(std::move(e)); });
  const std::vector<int32_t> a = iota_tokens(8, 0);  // two blocks
  cache_and_finish(pool, cache, a);
  std::vector<int32_t> a_blocks;
  {
    PrefixCache::Match m = cache.match(PrefixCache::kRoot, a, 8);
    a_blocks = m.blocks;
    for (int32_t b : m.blocks) pool.release(b);
  }
  ASSERT_EQ(a_blocks.size(), 2u);

  // Room for two blocks more than the free ones: both of A's blocks go to the host tier.
  EXPECT_EQ(cache.evict(2), 2);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(cache.num_cached_blocks(), 0);
  EXPECT_EQ(cache.num_host_cached_blocks(), 2);
  std::vector<PrefixCache::HostCopy> spills, loads;
  cache.take_host_copies(spills, loads);
  ASSERT_EQ(spills.size(), 2u);
  EXPECT_TRUE(loads.empty());
  // Leaves first: A's second block, then its first.
  EXPECT_EQ(spills[0].block, a_blocks[1]);
  EXPECT_EQ(spills[1].block, a_blocks[0]);
  EXPECT_NE(spills[0].slot, spills[1].slot);

  // Events: stored (device), removed (device), stored (host) per spilled block.
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[1].kind, Kind::Removed);
  EXPECT_EQ(ev[1].medium, KvCacheMedium::Device);
  EXPECT_EQ(ev[1].block_hashes.size(), 2u);
  EXPECT_EQ(ev[2].kind, Kind::Stored);
  EXPECT_EQ(ev[2].medium, KvCacheMedium::Host);
  EXPECT_EQ(ev[2].block_hashes, std::vector<uint64_t>{ev[0].block_hashes[1]});
  EXPECT_EQ(ev[2].parent_hash, ev[0].block_hashes[0]);
  EXPECT_EQ(ev[3].block_hashes, std::vector<uint64_t>{ev[0].block_hashes[0]});
  EXPECT_FALSE(ev[3].parent_hash.has_value());

  // A prompt sharing A's 8 tokens and more: both blocks come back into fresh device blocks.
  std::vector<int32_t> q = a;
  q.push_back(99);
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, q, int64_t(q.size()) - 1);
  ASSERT_EQ(m.blocks.size(), 2u);
  EXPECT_EQ(m.host_blocks, 2);
  EXPECT_EQ(cache.num_host_cached_blocks(), 0);
  EXPECT_EQ(cache.num_cached_blocks(), 2);
  for (int32_t b : m.blocks) EXPECT_EQ(pool.ref_count(b), 2);  // the cache's and the caller's
  cache.take_host_copies(spills, loads);
  ASSERT_EQ(loads.size(), 2u);
  EXPECT_EQ(loads[0].block, m.blocks[0]);
  EXPECT_EQ(loads[0].slot, spills[1].slot);  // the first block went to the second spill's slot
  EXPECT_EQ(loads[1].block, m.blocks[1]);
  EXPECT_EQ(loads[1].slot, spills[0].slot);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[4].kind, Kind::Removed);
  EXPECT_EQ(ev[4].medium, KvCacheMedium::Host);
  EXPECT_EQ(ev[5].kind, Kind::Stored);
  EXPECT_EQ(ev[5].medium, KvCacheMedium::Device);
  EXPECT_EQ(ev[5].block_hashes, ev[0].block_hashes);  // the same prefix, the same hashes
  for (int32_t b : m.blocks) pool.release(b);
}

TEST(HostKvTier, AFullHostTierDropsItsLeastRecentlyUsedLeaf) {
  BlockPool pool(2);
  PrefixCache cache(pool, kBs);
  cache.set_host_tier(1);
  cache_and_finish(pool, cache, iota_tokens(4, 0));    // X
  cache_and_finish(pool, cache, iota_tokens(4, 100));  // Y (newer)
  EXPECT_EQ(cache.evict(1), 1);  // X spilled
  EXPECT_EQ(cache.evict(1), 1);  // Y spilled: the host tier's one slot drops X
  EXPECT_EQ(cache.num_host_cached_blocks(), 1);
  EXPECT_EQ(cache.num_cached_blocks(), 0);
  std::vector<int32_t> x = iota_tokens(4, 0), y = iota_tokens(4, 100);
  x.push_back(1), y.push_back(1);
  EXPECT_TRUE(cache.match(PrefixCache::kRoot, x, 4).blocks.empty());
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, y, 4);
  EXPECT_EQ(m.host_blocks, 1);
  for (int32_t b : m.blocks) pool.release(b);
  cache.clear();
  EXPECT_EQ(cache.num_cached_blocks() + cache.num_host_cached_blocks(), 0);
  EXPECT_EQ(pool.num_free(), 2);
}

TEST(HostKvTier, ASlotBeingLoadedIsNotSpilledInto) {
  // One device block, one host slot: loading X's block back needs Y's device block. X's slot is
  // still X's (pinned while its load is decided, then busy until the batch's copies are taken),
  // so Y cannot be spilled into it (its spill would run before X's load and overwrite X): Y is
  // dropped instead.
  BlockPool pool(1);
  PrefixCache cache(pool, kBs);
  cache.set_host_tier(1);
  cache_and_finish(pool, cache, iota_tokens(4, 0));  // X
  EXPECT_EQ(cache.evict(1), 1);                      // X to the host
  std::vector<PrefixCache::HostCopy> spills, loads;
  cache.take_host_copies(spills, loads);
  spills.clear();
  cache_and_finish(pool, cache, iota_tokens(4, 100));  // Y takes the device block
  std::vector<int32_t> x = iota_tokens(4, 0);
  x.push_back(1);
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, x, 4);
  ASSERT_EQ(m.host_blocks, 1);
  cache.take_host_copies(spills, loads);
  EXPECT_TRUE(spills.empty());
  ASSERT_EQ(loads.size(), 1u);
  EXPECT_EQ(cache.num_host_cached_blocks(), 0);
  for (int32_t b : m.blocks) pool.release(b);
}

TEST(HostKvTier, ABlockLoadedAndEvictedInOneBatchGoesBackToItsSlot) {
  // An admission that matched X (loading it) and then did not fit lets X's block go; evicting it
  // again before the batch's copies run must not spill it (the spill would run before the load
  // and copy a block never filled): the load is undone, X stays in its slot.
  BlockPool pool(2);
  PrefixCache cache(pool, kBs);
  cache.set_host_tier(2);
  cache_and_finish(pool, cache, iota_tokens(4, 0));  // X
  EXPECT_EQ(cache.evict(1), 1);
  std::vector<PrefixCache::HostCopy> spills, loads;
  cache.take_host_copies(spills, loads);
  ASSERT_EQ(spills.size(), 1u);
  const int32_t x_slot = spills[0].slot;
  spills.clear();
  std::vector<int32_t> x = iota_tokens(4, 0);
  x.push_back(1);
  PrefixCache::Match m = cache.match(PrefixCache::kRoot, x, 4);
  ASSERT_EQ(m.host_blocks, 1);
  pool.release(m.blocks[0]);  // the admission is undone
  EXPECT_EQ(cache.evict(1), 1);
  cache.take_host_copies(spills, loads);
  EXPECT_TRUE(spills.empty());
  EXPECT_TRUE(loads.empty());
  EXPECT_EQ(cache.num_host_cached_blocks(), 1);
  EXPECT_EQ(pool.num_free(), 2);
  // It still comes back from the same slot.
  m = cache.match(PrefixCache::kRoot, x, 4);
  ASSERT_EQ(m.host_blocks, 1);
  cache.take_host_copies(spills, loads);
  ASSERT_EQ(loads.size(), 1u);
  EXPECT_EQ(loads[0].slot, x_slot);
  pool.release(m.blocks[0]);
}

TEST(HostKvTier, KvCacheCopiesBlocksToTheHostAndBack) {
  ModelConfig cfg;
  cfg.num_layers = 2;
  cfg.num_kv_heads = 1;
  cfg.head_dim = 2;
  KVCache kv(cfg, 4, 2, DType::F32);
  kv.set_host_tier(3);
  const size_t layer_floats = 4 * 2 * 1 * 2;  // blocks x block_size x heads x head_dim
  for (int64_t l = 0; l < 2; ++l)
    for (size_t i = 0; i < layer_floats; ++i) {
      static_cast<float*>(kv.k(l))[i] = float(100 * l + i);
      static_cast<float*>(kv.v(l))[i] = float(-100 * l - int64_t(i));
    }
  std::vector<std::pair<int32_t, int32_t>> out = {{1, 0}, {2, 1}, {0, 2}};  // 1,2 -> 0,1 is one run
  kv.copy_to_host(out);
  for (int64_t l = 0; l < 2; ++l) {
    std::fill_n(static_cast<float*>(kv.k(l)), layer_floats, 0.0f);
    std::fill_n(static_cast<float*>(kv.v(l)), layer_floats, 0.0f);
  }
  std::vector<std::pair<int32_t, int32_t>> back = {{3, 0}, {0, 1}, {1, 2}};
  kv.copy_from_host(back);  // block 1's data -> 3, block 2's -> 0, block 0's -> 1
  const int32_t from_block[4] = {2, 0, -1, 1};  // device block b now holds from_block[b]'s data
  for (int64_t l = 0; l < 2; ++l)
    for (int32_t b = 0; b < 4; ++b)
      for (size_t j = 0; j < 4; ++j) {
        const float* k = static_cast<const float*>(kv.k(l)) + size_t(b) * 4 + j;
        const float* v = static_cast<const float*>(kv.v(l)) + size_t(b) * 4 + j;
        if (from_block[b] < 0) {
          EXPECT_EQ(*k, 0.0f);
          continue;
        }
        EXPECT_EQ(*k, float(100 * l + int64_t(from_block[b]) * 4 + int64_t(j))) << "layer " << l << " block " << b;
        EXPECT_EQ(*v, float(-100 * l - int64_t(from_block[b]) * 4 - int64_t(j)));
      }
}

// Greedy tokens of each request run one after another on one engine; with a draft model beside
// the target, also the draft's logits at every returned token but the last (draft_logits()).
struct InTurn {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> draft_logits;
  EngineStats stats;
};

InTurn run_in_turn(Transformer& m, Transformer* draft, const std::vector<RequestParams>& reqs, EngineConfig ec) {
  Engine e(m, nullptr, ec, draft);
  InTurn r;
  for (const RequestParams& p : reqs) {
    uint64_t id = e.add_request(p);
    std::vector<int32_t> ids;
    while (e.has_unfinished())
      for (RequestOutput& o : e.step()) {
        if (o.id != id) continue;
        ids.insert(ids.end(), o.new_ids.begin(), o.new_ids.end());
        std::span<const float> dl = e.draft_logits(id);
        if (!o.finished && !dl.empty()) r.draft_logits.emplace_back(dl.begin(), dl.end());
      }
    r.tokens.push_back(ids);
  }
  r.stats = e.stats();
  return r;
}

TEST(HostKvTier, EngineBringsAnEvictedPrefixBackWithTheSameTokens) {
  LoadedModel lm = load_model(std::string(GALE_SOURCE_DIR) + "/models/default", ActDType::F32);
  LoadedModel dm = load_model(std::string(GALE_SOURCE_DIR) + "/models/draft", ActDType::F32);
  const int64_t bs = 16;
  // A: a 64-token prefix P (4 blocks) and a tail; B: 100 other tokens, which need all of A's
  // blocks (the device pool holds 7); C: P again with another tail.
  std::vector<int32_t> prefix;
  for (int i = 0; i < 64; ++i) prefix.push_back(300 + (i * 37) % 4000);
  RequestParams a, b, c;
  a.prompt = prefix, a.prompt.push_back(11), a.prompt.push_back(12);
  for (int i = 0; i < 100; ++i) b.prompt.push_back(5000 + i);
  c.prompt = prefix, c.prompt.push_back(21);
  for (RequestParams* p : {&a, &b, &c}) p->max_tokens = 6, p->ignore_eos = true;
  // With a draft model (its own KV cache under the same block tables: one host slot holds both
  // blocks), and with overlap on and off.
  for (Transformer* draft : {static_cast<Transformer*>(nullptr), dm.model.get()}) {
    for (bool overlap : {false, true}) {
      SCOPED_TRACE(std::string(draft ? "draft" : "no draft") + (overlap ? ", overlap" : ""));
      EngineConfig ec;
      ec.block_size = bs;
      ec.max_num_seqs = 1;
      ec.overlap = overlap;
      size_t per_token = KVCache::bytes_per_token(lm.model->config(), lm.model->kv_dtype());
      if (draft) per_token += KVCache::bytes_per_token(draft->config(), draft->kv_dtype());
      ec.kv_cache_bytes = 7 * bs * int64_t(per_token);
      InTurn off = run_in_turn(*lm.model, draft, {a, b, c}, ec);
      EXPECT_EQ(off.stats.prefix_cache_host_hit_tokens, 0);
      EXPECT_EQ(off.stats.prefix_cache_hit_tokens, 0);  // without the tier, B pushed P out
      ec.host_kv_cache_bytes = 64 << 20;
      InTurn on = run_in_turn(*lm.model, draft, {a, b, c}, ec);
      EXPECT_EQ(on.tokens, off.tokens);
      EXPECT_EQ(on.stats.prefix_cache_host_hit_tokens, 64);  // P's four blocks came back
      EXPECT_EQ(on.stats.prefix_cache_hit_tokens, 64);
      EXPECT_GT(on.stats.kv_host_spilled_blocks, 0);
      EXPECT_EQ(on.stats.kv_host_loaded_blocks, 4);
      EXPECT_LT(on.stats.computed_tokens, off.stats.computed_tokens);
      // The draft's cache came back too: its logits after C's restored prefix are those of the
      // recomputed one (up to the order of float sums: 1 row against 65).
      ASSERT_EQ(on.draft_logits.size(), off.draft_logits.size());
      if (draft) EXPECT_EQ(on.draft_logits.size(), 15u);  // 5 per request
      for (size_t i = 0; i < on.draft_logits.size(); ++i) {
        ASSERT_EQ(on.draft_logits[i].size(), off.draft_logits[i].size());
        float worst = 0;
        for (size_t k = 0; k < on.draft_logits[i].size(); ++k)
          worst = std::max(worst, std::abs(on.draft_logits[i][k] - off.draft_logits[i][k]));
        EXPECT_LT(worst, 1e-3f) << "draft logits " << i;
      }
    }
  }
}

TEST(HostKvTier, EngineRefusesATierThatHoldsNoBlock) {
  LoadedModel lm = load_model(std::string(GALE_SOURCE_DIR) + "/models/default", ActDType::F32);
  EngineConfig ec;
  ec.kv_cache_bytes = 8 << 20;
  ec.host_kv_cache_bytes = 1;
  EXPECT_THROW(Engine(*lm.model, nullptr, ec), Error);
  ec.host_kv_cache_bytes = 64 << 20;
  ec.prefix_cache = false;
  EXPECT_THROW(Engine(*lm.model, nullptr, ec), Error);
}

}  // namespace
