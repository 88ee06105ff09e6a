// The scheduler without a model: a mock KV cache records which token sits in every slot, so the
// tests check what a forward pass would read (every position of every scheduled sequence holds
// that sequence's token, whether computed, shared from the prefix cache or copied on write),
// along with budgets, ordering, preemption and block accounting.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include "core/error.h"
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
  explicit Sim(SchedulerConfig cfg)
      : cfg_(cfg), sched_(cfg), slots_(size_t(cfg.num_blocks * cfg.block_size), -1),
        host_slots_(size_t(cfg.num_host_blocks * cfg.block_size), -1) {}

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
    // The host tier's copies, in the engine's order: spills, loads, then copy-on-write.
    for (const PrefixCache::HostCopy& h : so.host_spills)
      std::copy_n(slots_.begin() + h.block * c.block_size, c.block_size, host_slots_.begin() + h.slot * c.block_size);
    for (const PrefixCache::HostCopy& h : so.host_loads)
      std::copy_n(host_slots_.begin() + h.slot * c.block_size, c.block_size, slots_.begin() + h.block * c.block_size);
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
      int32_t next = int32_t((toks.back() * 31 + int32_t(toks.size()) * 7 + salt_[s.id]) % 1000);
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

  // Drops the last n outputs of a live sequence as the engine does: the scheduler rolls back one
  // token more and gets the last remaining one again, which is recomputed and sampled from.
  void rollback(uint64_t id, int64_t n) {
    const std::vector<int32_t>& toks = sched_.tokens(id);
    const int32_t last = toks[toks.size() - size_t(n) - 1];
    sched_.rollback(id, n + 1);
    sched_.append_token(id, last);
    out_[id].resize(out_[id].size() - size_t(n));
  }
  // Changes what the "model" generates for a sequence from now on (rolled-back tokens come back
  // different, so a stale cached block would be read as a wrong token).
  void set_salt(uint64_t id, int32_t salt) { salt_[id] = salt; }

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
  std::vector<int32_t> slots_;       // mock KV: the token id written at every slot
  std::vector<int32_t> host_slots_;  // the host tier's, likewise
  std::map<uint64_t, int64_t> want_;
  std::map<uint64_t, std::vector<int32_t>> out_;
  std::map<uint64_t, int32_t> salt_;
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

// The same with a host tier (--host-kv-cache) of a few blocks: evicted prefix blocks are spilled,
// dropped from the tier when it is full and loaded back, within steps that also preempt, share
// and copy; every token read must be the one written (the Sim runs the spills, loads and copies
// on its mock KV in the engine's order) and every output equals the roomy run's.
TEST(Scheduler, RandomWorkloadsWithAHostTierMatchARoomyRun) {
  std::mt19937 rng(11);
  int64_t host_hits = 0, spilled = 0;
  for (int trial = 0; trial < 30; ++trial) {
    const int64_t bs = 1 + int64_t(rng() % 6);
    std::vector<Req> reqs;
    std::vector<std::vector<int32_t>> prefixes = {tokens(int(rng() % 40), 1), tokens(int(rng() % 40), 2),
                                                  tokens(int(rng() % 40), 3)};
    int64_t longest = 0;
    for (int i = 0; i < 14; ++i) {
      Req r;
      r.prompt = prefixes[rng() % 3];
      std::vector<int32_t> tail = tokens(1 + int(rng() % 30), 100 + i + trial);
      r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
      r.gen = 1 + int64_t(rng() % 20);
      r.priority = int(rng() % 2);
      longest = std::max<int64_t>(longest, int64_t(r.prompt.size()) + r.gen);
      reqs.push_back(r);
    }
    const int64_t need = (longest + bs - 1) / bs;
    SCOPED_TRACE("trial " + std::to_string(trial) + " bs " + std::to_string(bs));
    SchedulerConfig tc = config(need + int64_t(rng() % 4), 1 + int64_t(rng() % 6), 1 + int64_t(rng() % 48), true, bs);
    tc.num_host_blocks = 1 + int64_t(rng() % 24);
    Sim tight(tc);
    Sim roomy(config(4096, 64, 4096, false, bs));
    for (size_t i = 0; i < reqs.size(); ++i) {
      tight.add(i + 1, reqs[i]);
      roomy.add(i + 1, reqs[i]);
    }
    tight.run();
    roomy.run();
    EXPECT_EQ(tight.outputs(), roomy.outputs());
    host_hits += tight.sched().stats().prefix_host_hit_tokens;
    spilled += tight.sched().stats().host_spilled_blocks;
    expect_all_blocks_free(tight.sched());
    EXPECT_EQ(tight.sched().stats().host_blocks_cached, 0);  // clear_prefix_cache() empties the tier too
  }
  EXPECT_GT(spilled, 100);
  EXPECT_GT(host_hits, 100);
}

// ---- rollback -------------------------------------------------------------------------------

// Runs one sequence step by step (commit, then append the "model's" token) until it holds `len`
// tokens right after a commit (every token computed, nothing appended yet).
void run_to(Scheduler& s, uint64_t id, int64_t len) {
  while (true) {
    SchedulerOutput so = s.schedule();
    s.commit(so);
    const std::vector<int32_t>& t = s.tokens(id);
    ASSERT_FALSE(so.seqs.empty());
    if (!so.seqs.back().sample) continue;
    if (int64_t(t.size()) >= len) return;
    s.append_token(id, int32_t((t.back() * 31 + int32_t(t.size()) * 7) % 1000));
  }
}

void expect_same_plan(const SchedulerOutput& a, const SchedulerOutput& b) {
  ASSERT_EQ(a.seqs.size(), b.seqs.size());
  for (size_t i = 0; i < a.seqs.size(); ++i) {
    EXPECT_EQ(a.seqs[i].id, b.seqs[i].id);
    EXPECT_EQ(a.seqs[i].start_pos, b.seqs[i].start_pos);
    EXPECT_EQ(a.seqs[i].num_tokens, b.seqs[i].num_tokens);
    EXPECT_EQ(a.seqs[i].block_table, b.seqs[i].block_table);
    EXPECT_EQ(a.seqs[i].sample, b.seqs[i].sample);
  }
  EXPECT_EQ(a.copies.size(), b.copies.size());
  EXPECT_EQ(a.num_decode_tokens, b.num_decode_tokens);
  EXPECT_EQ(a.num_prefill_tokens, b.num_prefill_tokens);
}

// A sequence that ran m tokens further and rolled them back holds the blocks, and gets the
// schedules, of one that never had them: whole blocks freed, the partial last one kept.
TEST(SchedulerRollback, ThenAppendSchedulesAsIfNeverAppended) {
  struct Case { int64_t len, m; bool prefix; };
  // Block size 4, prompt 6. Rollbacks within a block, onto a boundary, across one and several;
  // with the prefix cache where the new length stays past the blocks it inserted.
  for (Case c : {Case{9, 1, false}, Case{9, 2, false}, Case{8, 1, false}, Case{8, 5, false}, Case{11, 9, false},
                 Case{7, 13, false}, Case{9, 2, true}, Case{12, 2, true}, Case{16, 3, true}}) {
    SCOPED_TRACE("len " + std::to_string(c.len) + " m " + std::to_string(c.m) + (c.prefix ? " prefix" : ""));
    Scheduler a(config(32, 4, 64, c.prefix)), b(config(32, 4, 64, c.prefix));
    a.add(1, tokens(6, 1));
    b.add(1, tokens(6, 1));
    run_to(a, 1, c.len + c.m);
    run_to(b, 1, c.len);
    const int64_t free_before = a.pool().num_free();
    a.rollback(1, c.m);
    EXPECT_EQ(a.tokens(1), b.tokens(1));
    EXPECT_EQ(a.pool().num_free(), b.pool().num_free());
    EXPECT_EQ(a.pool().num_free() - free_before, (c.len + c.m + 3) / 4 - (c.len + 3) / 4) << "whole blocks freed";
    EXPECT_EQ(a.stats().blocks_cached, b.stats().blocks_cached + (c.prefix ? (c.len + c.m) / 4 - c.len / 4 : 0));
    const int32_t next = 777;
    a.append_token(1, next);
    b.append_token(1, next);
    for (int step = 0; step < 9; ++step) {
      SchedulerOutput pa = a.schedule(), pb = b.schedule();
      expect_same_plan(pa, pb);
      a.commit(pa);
      b.commit(pb);
      a.append_token(1, 100 + step);
      b.append_token(1, 100 + step);
      EXPECT_EQ(a.pool().num_free(), b.pool().num_free());
    }
  }
}

TEST(SchedulerRollback, WaitingSequenceAndErrors) {
  Scheduler s(config(16, 4, 64, true));
  s.add(1, tokens(10, 1));
  s.rollback(1, 0);
  s.rollback(1, 3);  // waiting: only its tokens change
  EXPECT_EQ(s.tokens(1).size(), 7u);
  EXPECT_THROW(s.rollback(2, 1), Error);   // unknown
  EXPECT_THROW(s.rollback(1, -1), Error);  // negative
  EXPECT_THROW(s.rollback(1, 7), Error);   // would leave none
  SchedulerOutput so = s.schedule();
  EXPECT_THROW(s.rollback(1, 1), Error);   // its step is not committed yet
  EXPECT_EQ(s.tokens(1).size(), 7u);
  s.commit(so);
  EXPECT_EQ(s.stats().blocks_cached, 1);
  s.rollback(1, 6);  // into the prompt, down to one token
  EXPECT_EQ(s.tokens(1), std::vector<int32_t>{tokens(1, 1)});
  // Its one token sits in a block the cache holds (the first 4 tokens were cached): it lets the
  // block go and computes that token again into a block of its own.
  EXPECT_EQ(s.pool().num_free() + s.stats().blocks_cached, s.pool().num_blocks());
  so = s.schedule();
  ASSERT_EQ(so.seqs.size(), 1u);
  EXPECT_EQ(so.seqs[0].start_pos, 0);
  EXPECT_EQ(so.seqs[0].num_tokens, 1);
  EXPECT_EQ(s.pool().ref_count(so.seqs[0].block_table[0]), 1);
  s.commit(so);
  s.finish(1);
  expect_all_blocks_free(s);
}

// A sequence whose generated blocks entered the prefix cache rolls back into and past them and
// generates something else. The cached blocks keep their (right) KV for others: a request with
// the old tokens is served from them, one with the new tokens from the new blocks, and no one
// reads a stale slot (the mock KV checks every read) or writes into a shared block.
TEST(SchedulerRollback, PrefixCacheKeepsTheRightBlocksAndNeverServesStaleOnes) {
  // Block size 4, prompt 6, 16 generated: the sequence reaches 21 tokens, 5 full blocks cached.
  for (int64_t n : {1, 4, 5, 6, 8, 9, 15}) {  // new length 20-n: in, at the end of, or past cached blocks
    SCOPED_TRACE("rollback " + std::to_string(n));
    Sim sim(config(64, 4, 64, true));
    sim.add(1, {tokens(6, 1), 40});
    for (int i = 0; i < 16; ++i) sim.step();
    const std::vector<int32_t> old = sim.sched().tokens(1);
    ASSERT_EQ(old.size(), 22u);
    ASSERT_EQ(sim.sched().stats().blocks_cached, 5);
    sim.rollback(1, n);
    sim.set_salt(1, 5);
    EXPECT_EQ(sim.sched().stats().blocks_cached, 5) << "cached blocks stay cached";
    while (sim.sched().tokens(1).size() < 26) sim.step();
    const std::vector<int32_t> now = sim.sched().tokens(1);
    ASSERT_NE(std::vector<int32_t>(now.begin(), now.begin() + 22), old);
    // The old tokens: every full block of them is still cached.
    sim.add(2, {old, 2});
    sim.step();
    EXPECT_GE(sim.sched().num_cached_tokens(2), 20);
    // The new ones: served from the blocks the rolled-back sequence wrote since.
    sim.add(3, {std::vector<int32_t>(now.begin(), now.begin() + 21), 2});
    sim.step();
    EXPECT_EQ(sim.sched().num_cached_tokens(3), 20);
    sim.run();
    expect_all_blocks_free(sim.sched());
  }
}

// Random workloads, tight KV budget, rollbacks of random sequences at random steps (into cached
// and preempted sequences too): outputs equal the roomy run when the rolled-back tokens come
// back the same; when they come back different, every read still finds its own token.
TEST(SchedulerRollback, RandomRollbacksUnderPressure) {
  std::mt19937 rng(11);
  int64_t rollbacks = 0, preemptions = 0, hits = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t bs = 1 + int64_t(rng() % 6);
    std::vector<Req> reqs;
    std::vector<int32_t> shared = tokens(int(rng() % 30), 1);
    int64_t longest = 0;
    for (int i = 0; i < 8; ++i) {
      Req r;
      r.prompt = shared;
      std::vector<int32_t> tail = tokens(2 + int(rng() % 20), 100 + i + trial);
      r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
      r.gen = 4 + int64_t(rng() % 20);
      longest = std::max<int64_t>(longest, int64_t(r.prompt.size()) + r.gen);
      reqs.push_back(r);
    }
    const int64_t need = (longest + bs - 1) / bs;
    for (bool change : {false, true}) {
      for (bool prefix : {false, true}) {
        SCOPED_TRACE("trial " + std::to_string(trial) + " bs " + std::to_string(bs) + (prefix ? " prefix" : "") +
                     (change ? " new tokens" : ""));
        Sim tight(config(need + 1 + int64_t(rng() % 4), 1 + int64_t(rng() % 5), 1 + int64_t(rng() % 40), prefix, bs));
        for (size_t i = 0; i < reqs.size(); ++i) tight.add(i + 1, reqs[i]);
        for (int step = 0; step < 100000 && tight.sched().has_unfinished(); ++step) {
          tight.step();
          if (rng() % 3 != 0) continue;
          const uint64_t id = 1 + rng() % reqs.size();
          if (!tight.sched().contains(id)) continue;
          const int64_t k = int64_t(tight.outputs().at(id).size());
          if (k == 0) continue;
          tight.rollback(id, 1 + int64_t(rng() % uint64_t(k)));
          if (change) tight.set_salt(id, int32_t(rng() % 50));
          ++rollbacks;
        }
        EXPECT_FALSE(tight.sched().has_unfinished());
        if (!change) {
          Sim roomy(config(4096, 64, 4096, false, bs));
          for (size_t i = 0; i < reqs.size(); ++i) roomy.add(i + 1, reqs[i]);
          roomy.run();
          EXPECT_EQ(tight.outputs(), roomy.outputs());
        }
        preemptions += tight.sched().stats().preemptions;
        hits += tight.sched().stats().prefix_hit_tokens;
        expect_all_blocks_free(tight.sched());
      }
    }
  }
  EXPECT_GT(rollbacks, 200);
  EXPECT_GT(preemptions, 10);
  EXPECT_GT(hits, 100);
}

}  // namespace
