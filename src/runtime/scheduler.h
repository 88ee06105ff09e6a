// The continuous-batching scheduler: decides, step by step, which sequences run and how many of
// their tokens, and owns their KV block tables. Device-free: it sees token ids, block ids and
// counts, never tensors (vLLM v1's split: schedule() -> SchedulerOutput).
//
// One step (schedule()):
//   1. running decodes (one token each), in rank order;
//   2. running prefills (chunks of prompts already started), in rank order;
//   3. waiting sequences, admitted in rank order while max_num_seqs, the token budget and the free
//      blocks allow (strictly in order: a request that does not fit blocks the ones behind it).
// Rank = (priority, arrival): lower first, FCFS within a priority. Decodes come first, so however
// long a prompt is, it only takes what the token budget leaves (chunked prefill) and never starves
// them. When a running sequence needs a block and none is free (after evicting unreferenced
// prefix-cache blocks), the lowest-ranked (newest) running sequence not yet scheduled in this step
// is preempted: its blocks are released and it is recomputed later from its tokens (prompt +
// output so far). No sequence is admitted in a step that preempted.
//
// The caller runs the step (copies, then one forward over `seqs`), then commit(), then
// append_token()/finish() for the sequences whose `sample` was set.
//
// Proposals (speculative decoding): propose(id, tokens) appends guessed tokens to a decoding
// sequence; its next decode is then a chunk of 1 + k tokens (ScheduledSeq::num_spec), trimmed to
// the token budget, or dropped when the sequence is not scheduled in that step or is preempted
// (so proposals never outlive the step they were made for, and a recompute never sees them).
// Blocks holding proposals enter the prefix cache only at a later commit, after the caller has
// rolled the rejected ones back (rollback(id, rejected) then append_token()), so a rejection
// never lands inside a cached block (which would cost a recompute of its leading tokens).
//
// Rollback (speculative decoding's seam): rollback(id, n) removes a sequence's last n tokens as
// if they had never been appended. It may be called for any sequence that is not in a step
// scheduled and not yet committed: between commit() and the next schedule() for running ones,
// at any time for waiting ones. (A pipelined caller, such as the engine with overlap, holds its
// rollbacks until the step in flight is committed.) The sequence keeps the blocks that hold its
// remaining computed tokens, the partially used last one included, and releases the rest.
#pragma once
#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "runtime/block_pool.h"
#include "runtime/prefix_cache.h"

namespace gale {

struct SchedulerConfig {
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 512;
  bool prefix_cache = true;
  // The prefix cache's host tier (--host-kv-cache): blocks evicted from the pool are kept in this
  // many host slots and brought back on a hit (runtime/prefix_cache.h); 0 = none.
  int64_t num_host_blocks = 0;
};

struct ScheduledSeq {
  uint64_t id = 0;
  int64_t start_pos = 0;             // tokens already in the KV cache
  int64_t num_tokens = 0;            // computed this step: tokens[start_pos, start_pos + num_tokens)
  std::vector<int32_t> block_table;  // covers start_pos + num_tokens positions
  bool sample = false;               // the chunk ends at the last known token: sample from its logits
  // Speculative decoding: the chunk's last num_spec tokens are proposals (the chunk is the last
  // accepted token and them): the caller needs logits at each of its 1 + num_spec positions.
  int64_t num_spec = 0;
};

struct BlockCopy {
  int32_t src = 0, dst = 0;          // copy the whole block (copy-on-write of a shared partial block)
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> seqs;    // decodes first, then prefill chunks
  std::vector<BlockCopy> copies;     // to run before the forward
  // The host tier's copies, to run before `copies` and the forward: spills (device block -> host
  // slot) first, then loads (host slot -> device block).
  std::vector<PrefixCache::HostCopy> host_spills, host_loads;
  std::vector<uint64_t> preempted;   // lost their blocks in this step; they will be recomputed
  int64_t num_batched_tokens = 0;
  int64_t num_decode_tokens = 0, num_prefill_tokens = 0;
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;
  int64_t blocks_total = 0, blocks_free = 0, blocks_cached = 0;
  int64_t prefix_queried_tokens = 0, prefix_hit_tokens = 0;  // first admissions only
  int64_t prefix_host_hit_tokens = 0;  // tokens brought back from the host tier (every match)
  int64_t host_blocks_total = 0, host_blocks_cached = 0;
  int64_t host_spilled_blocks = 0, host_loaded_blocks = 0;  // since the start
  int64_t preemptions = 0;
  int64_t computed_tokens = 0;  // tokens run through the model (prefill + decode + recompute)
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig cfg);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // tokens: the prompt (not empty). The id must be new.
  void add(uint64_t id, std::vector<int32_t> tokens, int priority = 0);
  SchedulerOutput schedule();
  // The step ran: the scheduled tokens are in the cache; full blocks enter the prefix cache.
  void commit(const SchedulerOutput& out);
  // A token was sampled for the sequence: it is computed in a later step.
  void append_token(uint64_t id, int32_t token);
  // True when the sequence runs, is in no step, holds no proposals and has exactly one token to
  // compute (a decode): propose() may be called.
  bool can_propose(uint64_t id) const;
  // Appends proposals (can_propose(id) must hold) for the next schedule() (see the top).
  void propose(uint64_t id, std::span<const int32_t> tokens);
  // Replaces the not yet computed token at position pos (a placeholder proposal, filled once the
  // step's blocks are known: the draft model writes its KV there while proposing).
  void set_token(uint64_t id, int64_t pos, int32_t token);
  // Finished or aborted (running or waiting): releases its blocks (cached ones stay cached).
  void finish(uint64_t id);
  // Removes the last n tokens (0 <= n < its length: at least one token stays; the scheduler
  // does not tell prompt from output, so a rollback may reach into the prompt). num_computed is
  // clamped to the new length and every block past the one holding its last computed position
  // is released. Prefix cache: blocks the sequence inserted stay cached (their KV is right for
  // their tokens) and the sequence drops its references past its new computed length; when the
  // new length ends inside a block the cache holds, the sequence would write the rest of that
  // shared block, so it lets it go too and recomputes that block's leading tokens instead (at
  // most block_size - 1). A partially filled block is never in the cache, and is inserted only
  // once all its positions are recomputed, so stale KV is never shared.
  // When every remaining token is computed afterwards (as after commit()), the caller appends a
  // token before the next schedule(); to sample again from the last remaining token instead,
  // roll back one more and append that token again (as Engine::rollback does).
  // Throws gale::Error for an unknown id, n < 0, n >= its length, or a sequence scheduled in a
  // step that is not committed yet.
  void rollback(uint64_t id, int64_t n);

  bool contains(uint64_t id) const { return seqs_.count(id) != 0; }
  const std::vector<int32_t>& tokens(uint64_t id) const;
  int64_t num_cached_tokens(uint64_t id) const;  // prompt tokens its first admission found cached
  bool has_unfinished() const { return !seqs_.empty(); }
  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return cfg_; }
  const BlockPool& pool() const { return pool_; }
  // Drops every unreferenced cached block (all blocks are free afterwards when nothing runs).
  void clear_prefix_cache();
  // The prefix cache's events go to `sink` (runtime/kv_cache_event.h); none without a prefix cache.
  void set_kv_event_sink(KvCacheEventSink sink);

 private:
  struct Seq {
    uint64_t id = 0;
    std::vector<int32_t> tokens;
    int priority = 0;
    uint64_t arrival = 0;
    int64_t num_computed = 0;
    std::vector<int32_t> blocks;
    int32_t cache_node = PrefixCache::kRoot;  // prefix-cache node of its last inserted block
    int64_t num_inserted = 0;                 // leading blocks known to the prefix cache
    int64_t cached_tokens = 0;
    int64_t num_preemptions = 0;
    bool running = false;
    bool in_step = false;  // scheduled, not yet committed
    int64_t num_spec = 0;  // trailing tokens that are proposals (see propose())
  };
  using Rank = std::tuple<int, uint64_t, uint64_t>;  // (priority, arrival, id)
  static Rank rank(const Seq& s) { return {s.priority, s.arrival, s.id}; }

  bool take_blocks(int64_t n, std::vector<int32_t>& out);
  int64_t available_blocks() const;
  void release_blocks(Seq& s);
  void preempt(Seq& s, SchedulerOutput& out);
  // Extends s's computed prefix from the prefix cache (s.num_computed block-aligned, all its
  // blocks inserted). Returns false, changing nothing, when the partial copy's block is not free.
  void match_prefix(Seq& s, SchedulerOutput& out, int64_t& matched);
  // Inserts s's full blocks up to `upto` computed tokens into the prefix cache.
  void insert_full_blocks(Seq& s, int64_t upto);
  // Drops s's proposals (not computed: no block holds them yet).
  void drop_proposals(Seq& s);
  // Blocks s needs for n more tokens.
  int64_t blocks_needed(const Seq& s, int64_t n) const;

  SchedulerConfig cfg_;
  BlockPool pool_;
  std::unique_ptr<PrefixCache> cache_;
  std::unordered_map<uint64_t, Seq> seqs_;
  std::set<Rank> running_, waiting_;
  std::vector<int32_t> pending_copy_src_;  // retained until commit()
  uint64_t next_arrival_ = 0;
  SchedulerStats stats_;
};

}  // namespace gale
