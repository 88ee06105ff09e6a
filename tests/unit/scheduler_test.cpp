// The scheduler without a model: a mock KV cache records which token sits in every slot, so the
// tests check what a forward pass would read (every position of every scheduled sequence holds
// that sequence's token, whether computed, shared from the prefix cache or copied on write),
// along with budgets, ordering, preemption and block accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "runtime/scheduler.h"

using namespace gale;

namespace {

struct Req {
  std::vector<int32_t> prompt;
  int64_t gen = 4;
  int priority = 0;
};

// Drives a Scheduler the way the engine does; the "model" makes token = f(last token, position).
class Sim {
 public:
  explicit Sim(SchedulerConfig cfg) : cfg_(cfg), sched_(cfg), slots_(size_t(cfg.num_blocks * cfg.block_size), -1) {}

  void add(uint64_t id, const Req& r) {
    sched_.add(id, r.prompt, r.priority);
    want_[id] = r.gen;
    out_[id] = {};
  }

  // One step; checks invariants and returns the plan.
  SchedulerOutput step() {
    SchedulerOutput so = sched_.schedule();
    const SchedulerConfig& c = cfg_;
    EXPECT_LE(so.num_batched_tokens, c.max_num_batched_tokens);
    EXPECT_LE(sched_.num_running(), c.max_num_seqs);
    EXPECT_EQ(so.num_batched_tokens, so.num_decode_tokens + so.num_prefill_tokens);
    for (const BlockCopy& cp : so.copies)
      for (int64_t i = 0; i < c.block_size; ++i)
        slots_[size_t(cp.dst * c.block_size + i)] = slots_[size_t(cp.src * c.block_size + i)];
    std::set<uint64_t> seen;
    for (const ScheduledSeq& s : so.seqs) {
      EXPECT_TRUE(seen.insert(s.id).second) << "scheduled twice";
      const std::vector<int32_t>& toks = sched_.tokens(s.id);
      EXPECT_GE(s.num_tokens, 1);
      EXPECT_LE(s.start_pos + s.num_tokens, int64_t(toks.size()));
      EXPECT_GE(int64_t(s.block_table.size()) * c.block_size, s.start_pos + s.num_tokens);
      EXPECT_EQ(s.sample, s.start_pos + s.num_tokens == int64_t(toks.size()));
      for (int64_t p = s.start_pos; p < s.start_pos + s.num_tokens; ++p) {
        int32_t b = s.block_table[size_t(p / c.block_size)];
        EXPECT_EQ(sched_.pool().ref_count(b), 1) << "write into a shared block";
        slots_[size_t(b * c.block_size + p % c.block_size)] = toks[size_t(p)];
      }
      // What attention reads: every earlier position holds this sequence's token.
      for (int64_t p = 0; p < s.start_pos + s.num_tokens; ++p) {
        int32_t b = s.block_table[size_t(p / c.block_size)];
        if (slots_[size_t(b * c.block_size + p % c.block_size)] != toks[size_t(p)]) {
          ADD_FAILURE() << "seq " << s.id << " reads a wrong token at " << p;
          break;
        }
      }
    }
    sched_.commit(so);
    for (const ScheduledSeq& s : so.seqs) {
      if (!s.sample) continue;
      const std::vector<int32_t>& toks = sched_.tokens(s.id);
      int32_t next = int32_t((toks.back() * 31 + int32_t(toks.size()) * 7) % 1000);
      out_[s.id].push_back(next);
      if (int64_t(out_[s.id].size()) >= want_[s.id]) {
        sched_.finish(s.id);
        finished_order_.push_back(s.id);
      } else {
        sched_.append_token(s.id, next);
      }
    }
    return so;
  }

  void run(int max_steps = 100000) {
    for (int i = 0; i < max_steps && sched_.has_unfinished(); ++i) step();
    EXPECT_FALSE(sched_.has_unfinished());
  }

  Scheduler& sched() { return sched_; }
  const std::map<uint64_t, std::vector<int32_t>>& outputs() const { return out_; }
  const std::vector<uint64_t>& finished_order() const { return finished_order_; }

 private:
  SchedulerConfig cfg_;
  Scheduler sched_;
  std::vector<int32_t> slots_;  // mock KV: the token id written at every slot
  std::map<uint64_t, int64_t> want_;
  std::map<uint64_t, std::vector<int32_t>> out_;
  std::vector<uint64_t> finished_order_;
};

std::vector<int32_t> tokens(int n, int seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[size_t(i)] = (seed * 131 + i * 17) % 997;
  return t;
}

SchedulerConfig config(int64_t blocks, int64_t seqs, int64_t budget, bool prefix, int64_t bs = 4) {
  SchedulerConfig c;
  c.num_blocks = blocks;
  c.block_size = bs;
  c.max_num_seqs = seqs;
  c.max_num_batched_tokens = budget;
  c.prefix_cache = prefix;
  return c;
}

void expect_all_blocks_free(Scheduler& s) {
  EXPECT_EQ(s.pool().num_free() + s.stats().blocks_cached, s.pool().num_blocks());
  s.clear_prefix_cache();
  EXPECT_EQ(s.pool().num_free(), s.pool().num_blocks());
}

TEST(Scheduler, BudgetsAndSeqLimitRespected) {
  for (bool prefix : {false, true}) {
    Sim sim(config(256, 3, 10, prefix));
    for (int i = 0; i < 8; ++i) sim.add(uint64_t(i + 1), {tokens(3 + 7 * i, i), 5});
    sim.run();
    EXPECT_EQ(sim.outputs().size(), 8u);
    for (auto& [id, o] : sim.outputs()) EXPECT_EQ(o.size(), 5u);
    expect_all_blocks_free(sim.sched());
  }
}

TEST(Scheduler, DecodesRunEveryStepWhileALongPromptPrefills) {
  Sim sim(config(1024, 8, 16, false));
  sim.add(1, {tokens(5, 1), 200});
  sim.add(2, {tokens(6, 2), 200});
  for (int i = 0; i < 3; ++i) sim.step();  // both prefilled, decoding
  sim.add(3, {tokens(1000, 3), 2});
  int long_prefill_steps = 0;
  for (int i = 0; i < 80; ++i) {
    SchedulerOutput so = sim.step();
    bool has_long = false;
    int decodes = 0;
    for (auto& s : so.seqs) {
      if (s.id == 3 && !s.sample) has_long = true;
      if (s.id != 3) ++decodes;
    }
    ASSERT_EQ(decodes, 2) << "a decode was starved at step " << i;
    EXPECT_EQ(so.seqs.front().id == 3, false) << "decodes come first";
    if (has_long) {
      ++long_prefill_steps;
      EXPECT_EQ(so.num_batched_tokens, 16);  // the prompt takes exactly what the decodes leave
    }
  }
  EXPECT_GE(long_prefill_steps, 70);
}

TEST(Scheduler, FcfsWithinPriorityLowerPriorityFirst) {
  Sim sim(config(256, 1, 64, false));
  sim.add(1, {tokens(4, 1), 2, 5});
  sim.add(2, {tokens(4, 2), 2, 1});
  sim.add(3, {tokens(4, 3), 2, 1});
  sim.add(4, {tokens(4, 4), 2, 0});
  sim.run();
  EXPECT_EQ(sim.finished_order(), (std::vector<uint64_t>{4, 2, 3, 1}));
}

TEST(Scheduler, PreemptsTheNewestAndRecomputesIt) {
  // 6 blocks of 4 tokens; three sequences of 4 prompt tokens growing to 12 tokens need 9 blocks.
  Sim sim(config(6, 8, 64, false));
  for (uint64_t id = 1; id <= 3; ++id) sim.add(id, {tokens(4, int(id)), 8});
  std::vector<uint64_t> preempted;
  for (int i = 0; i < 200 && sim.sched().has_unfinished(); ++i) {
    SchedulerOutput so = sim.step();
    preempted.insert(preempted.end(), so.preempted.begin(), so.preempted.end());
  }
  EXPECT_FALSE(sim.sched().has_unfinished());
  ASSERT_FALSE(preempted.empty());
  EXPECT_EQ(preempted.front(), 3u);  // the newest goes first
  EXPECT_EQ(std::count(preempted.begin(), preempted.end(), 1u), 0);  // the oldest never
  EXPECT_GT(sim.sched().stats().preemptions, 0);
  // Outputs equal an unconstrained run: recompute changes nothing.
  Sim big(config(64, 8, 64, false));
  for (uint64_t id = 1; id <= 3; ++id) big.add(id, {tokens(4, int(id)), 8});
  big.run();
  EXPECT_EQ(sim.outputs(), big.outputs());
  expect_all_blocks_free(sim.sched());
}

TEST(Scheduler, AdmissionWaitsForFreeBlocks) {
  Sim sim(config(4, 8, 64, false));
  sim.add(1, {tokens(12, 1), 2});  // 3 blocks at first, 4 at the end
  sim.add(2, {tokens(8, 2), 2});   // 2 blocks: does not fit next to 1
  SchedulerOutput so = sim.step();
  ASSERT_EQ(so.seqs.size(), 1u);
  EXPECT_EQ(so.seqs[0].id, 1u);
  EXPECT_EQ(sim.sched().num_waiting(), 1);
  sim.run();
  EXPECT_EQ(sim.outputs().at(2).size(), 2u);
  expect_all_blocks_free(sim.sched());
}

TEST(Scheduler, PrefixCacheSharesBlocksAndCopiesOnWrite) {
  Sim sim(config(64, 8, 256, true));
  std::vector<int32_t> base = tokens(14, 9);
  sim.add(1, {base, 3});
  sim.run();
  const int64_t cached = sim.sched().stats().blocks_cached;
  EXPECT_EQ(cached, 4);  // 14 prompt + 2 computed outputs = 16 tokens: 4 full blocks
  // Shares 10 tokens: two full blocks and 2 tokens of the third (copied on write).
  std::vector<int32_t> p2(base.begin(), base.begin() + 10);
  p2.push_back(500);
  p2.push_back(501);
  sim.add(2, {p2, 3});
  SchedulerOutput so = sim.step();
  ASSERT_EQ(so.copies.size(), 1u);
  ASSERT_EQ(so.seqs.size(), 1u);
  EXPECT_EQ(so.seqs[0].start_pos, 10);
  EXPECT_EQ(sim.sched().num_cached_tokens(2), 10);
  sim.run();
  // The same prompt again: all but the last token come from the cache.
  sim.add(3, {base, 3});
  so = sim.step();
  EXPECT_EQ(so.seqs[0].start_pos, 13);
  EXPECT_EQ(so.seqs[0].num_tokens, 1);
  sim.run();
  SchedulerStats st = sim.sched().stats();
  EXPECT_EQ(st.prefix_hit_tokens, 10 + 13);
  EXPECT_EQ(st.prefix_queried_tokens, 14 + 12 + 14);
  // Outputs equal a run without the cache.
  Sim cold(config(64, 8, 256, false));
  cold.add(1, {base, 3});
  cold.add(2, {p2, 3});
  cold.add(3, {base, 3});
  cold.run();
  EXPECT_EQ(sim.outputs(), cold.outputs());
  expect_all_blocks_free(sim.sched());
}

TEST(Scheduler, RunningPrefillAdoptsBlocksAnotherSequenceJustCached) {
  // Two requests with the same 64-token prefix whose prefills overlap (40-token budget): the second
  // takes over the first one's blocks as they are cached instead of computing them again.
  Sim sim(config(128, 8, 40, true));
  std::vector<int32_t> prefix = tokens(64, 3);
  auto with = [&](int32_t tail) {
    std::vector<int32_t> p = prefix;
    p.push_back(tail);
    p.push_back(tail + 1);
    return p;
  };
  sim.add(1, {with(700), 2});
  sim.add(2, {with(800), 2});
  sim.run();
  EXPECT_GE(sim.sched().stats().prefix_hit_tokens, 48);
  Sim cold(config(128, 8, 40, false));
  cold.add(1, {with(700), 2});
  cold.add(2, {with(800), 2});
  cold.run();
  EXPECT_EQ(sim.outputs(), cold.outputs());
  EXPECT_LT(sim.sched().stats().computed_tokens, cold.sched().stats().computed_tokens - 40);
  expect_all_blocks_free(sim.sched());
}

// Random workloads with shared prefixes under a tight KV budget: preemption, eviction, sharing
// and copy-on-write all happen; every output equals the roomy run and no block leaks.
TEST(Scheduler, RandomWorkloadsUnderPressureMatchARoomyRun) {
  std::mt19937 rng(7);
  int64_t preemptions = 0, hits = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t bs = 1 + int64_t(rng() % 8);
    std::vector<Req> reqs;
    std::vector<std::vector<int32_t>> prefixes = {tokens(int(rng() % 40), 1), tokens(int(rng() % 40), 2)};
    int64_t longest = 0;
    for (int i = 0; i < 12; ++i) {
      Req r;
      r.prompt = prefixes[rng() % 2];
      std::vector<int32_t> tail = tokens(1 + int(rng() % 30), 100 + i + trial);
      r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
      r.gen = 1 + int64_t(rng() % 20);
      r.priority = int(rng() % 2);
      longest = std::max<int64_t>(longest, int64_t(r.prompt.size()) + r.gen);
      reqs.push_back(r);
    }
    const int64_t need = (longest + bs - 1) / bs;
    for (bool prefix : {false, true}) {
      SCOPED_TRACE("trial " + std::to_string(trial) + " bs " + std::to_string(bs) + (prefix ? " prefix" : ""));
      Sim tight(config(need + int64_t(rng() % 4), 1 + int64_t(rng() % 6), 1 + int64_t(rng() % 48), prefix, bs));
      Sim roomy(config(4096, 64, 4096, false, bs));
      for (size_t i = 0; i < reqs.size(); ++i) {
        tight.add(i + 1, reqs[i]);
        roomy.add(i + 1, reqs[i]);
      }
      tight.run();
      roomy.run();
      EXPECT_EQ(tight.outputs(), roomy.outputs());
      preemptions += tight.sched().stats().preemptions;
      hits += tight.sched().stats().prefix_hit_tokens;
      expect_all_blocks_free(tight.sched());
    }
  }
  EXPECT_GT(preemptions, 20);
  EXPECT_GT(hits, 100);
}

}  // namespace
