#include "runtime/scheduler.h"

#include <algorithm>

#include "core/checked_math.h"
#include "core/error.h"

namespace gale {

Scheduler::Scheduler(SchedulerConfig cfg) : cfg_(cfg), pool_(cfg.num_blocks) {
  if (cfg_.block_size <= 0) throw Error("block size must be > 0");
  if (cfg_.num_blocks <= 0) throw Error("the KV cache has no blocks");
  if (cfg_.max_num_seqs <= 0) throw Error("max_num_seqs must be > 0");
  if (cfg_.max_num_batched_tokens <= 0) throw Error("max_num_batched_tokens must be > 0");
  if (cfg_.num_host_blocks < 0) throw Error("the host KV tier's size must be >= 0");
  if (cfg_.prefix_cache) cache_ = std::make_unique<PrefixCache>(pool_, cfg_.block_size);
  if (cache_ && cfg_.num_host_blocks > 0) cache_->set_host_tier(cfg_.num_host_blocks);
}

Scheduler::~Scheduler() {
  for (auto& [id, s] : seqs_) release_blocks(s);
  for (int32_t b : pending_copy_src_) pool_.release(b);
  cache_.reset();
}

void Scheduler::add(uint64_t id, std::vector<int32_t> tokens, int priority) {
  GALE_ASSERT(!tokens.empty());
  GALE_ASSERT(!seqs_.count(id));
  Seq s;
  s.id = id;
  s.tokens = std::move(tokens);
  s.priority = priority;
  s.arrival = next_arrival_++;
  auto [it, ok] = seqs_.emplace(id, std::move(s));
  waiting_.insert(rank(it->second));
}

const std::vector<int32_t>& Scheduler::tokens(uint64_t id) const { return seqs_.at(id).tokens; }

int64_t Scheduler::num_cached_tokens(uint64_t id) const { return seqs_.at(id).cached_tokens; }

int64_t Scheduler::available_blocks() const {
  return pool_.num_free() + (cache_ ? cache_->num_evictable() : 0);
}

bool Scheduler::take_blocks(int64_t n, std::vector<int32_t>& out) {
  if (n <= 0) return true;
  if (pool_.num_free() < n) {
    if (!cache_ || available_blocks() < n) return false;
    cache_->evict(n - pool_.num_free());
  }
  return pool_.allocate(n, out);
}

void Scheduler::release_blocks(Seq& s) {
  for (int32_t b : s.blocks) pool_.release(b);
  s.blocks.clear();
  s.num_computed = 0;
  s.cache_node = PrefixCache::kRoot;
  s.num_inserted = 0;
}

int64_t Scheduler::blocks_needed(const Seq& s, int64_t n) const {
  return (s.num_computed + n + cfg_.block_size - 1) / cfg_.block_size - int64_t(s.blocks.size());
}

void Scheduler::preempt(Seq& s, SchedulerOutput& out) {
  // Copies into its blocks planned earlier in this step are void now.
  for (size_t i = out.copies.size(); i-- > 0;) {
    if (std::find(s.blocks.begin(), s.blocks.end(), out.copies[i].dst) == s.blocks.end()) continue;
    pool_.release(out.copies[i].src);
    pending_copy_src_.erase(std::find(pending_copy_src_.begin(), pending_copy_src_.end(), out.copies[i].src));
    out.copies.erase(out.copies.begin() + std::ptrdiff_t(i));
  }
  drop_proposals(s);
  release_blocks(s);  // its full blocks stay in the prefix cache: the recompute may find them
  running_.erase(rank(s));
  waiting_.insert(rank(s));
  s.running = false;
  ++s.num_preemptions;
  ++stats_.preemptions;
  out.preempted.push_back(s.id);
}

// Adopts cached blocks that continue s's computed prefix. Matching starts at the block holding
// position num_computed: a cached full block replaces s's own partially computed one. At the
// divergence point a partially matching cached block is copied (copy-on-write) into a fresh
// block when s has none there. The last token is never matched: its logits are needed.
void Scheduler::match_prefix(Seq& s, SchedulerOutput& out, int64_t& matched) {
  matched = 0;
  const int64_t bs = cfg_.block_size, len = int64_t(s.tokens.size());
  const int64_t first = s.num_computed / bs;
  if (!cache_ || s.num_inserted != first) return;
  std::span<const int32_t> rest = std::span<const int32_t>(s.tokens).subspan(size_t(first * bs));
  PrefixCache::Match m = cache_->match(s.cache_node, rest, len - 1 - first * bs);
  stats_.prefix_host_hit_tokens += m.host_blocks * bs;
  const int64_t before = s.num_computed;
  for (size_t j = 0; j < m.blocks.size(); ++j) {
    size_t idx = size_t(first) + j;
    if (idx < s.blocks.size()) {
      pool_.release(s.blocks[idx]);
      s.blocks[idx] = m.blocks[j];
    } else {
      s.blocks.push_back(m.blocks[j]);
    }
  }
  if (!m.blocks.empty()) {
    s.cache_node = m.node;
    s.num_inserted = first + int64_t(m.blocks.size());
    s.num_computed = std::max(s.num_computed, s.num_inserted * bs);
  }
  if (m.partial_block >= 0) {
    const int64_t upto = s.num_inserted * bs + m.partial_tokens;
    std::vector<int32_t> dst;
    if (upto > s.num_computed && int64_t(s.blocks.size()) == s.num_inserted && take_blocks(1, dst)) {
      out.copies.push_back({m.partial_block, dst[0]});
      pending_copy_src_.push_back(m.partial_block);  // kept alive until the copy has run
      s.blocks.push_back(dst[0]);
      s.num_computed = upto;
    } else {
      pool_.release(m.partial_block);
    }
  }
  matched = s.num_computed - before;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int64_t budget = cfg_.max_num_batched_tokens;
  std::set<uint64_t> scheduled;

  auto emit = [&](Seq& s, int64_t n, bool decode) {
    ScheduledSeq ss;
    ss.id = s.id;
    ss.start_pos = s.num_computed;
    ss.num_tokens = n;
    ss.block_table = s.blocks;
    ss.sample = s.num_computed + n == int64_t(s.tokens.size());
    ss.num_spec = s.num_spec;
    out.seqs.push_back(std::move(ss));
    s.in_step = true;
    scheduled.insert(s.id);
    budget -= n;
    out.num_batched_tokens += n;
    (decode ? out.num_decode_tokens : out.num_prefill_tokens) += n;
  };
  // Gives s the blocks for n more tokens, preempting the newest unscheduled running sequences
  // while blocks are short. False when s itself was the one preempted.
  auto grow = [&](Seq& s, int64_t n) {
    while (true) {
      std::vector<int32_t> got;
      if (take_blocks(blocks_needed(s, n), got)) {
        s.blocks.insert(s.blocks.end(), got.begin(), got.end());
        return true;
      }
      Seq* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        uint64_t id = std::get<2>(*it);
        if (!scheduled.count(id)) {
          victim = &seqs_.at(id);
          break;
        }
      }
      GALE_ASSERT(victim);  // s itself is running and unscheduled
      preempt(*victim, out);
      if (victim == &s) return false;
    }
  };

  std::vector<uint64_t> order;
  for (const Rank& r : running_) order.push_back(std::get<2>(r));
  // 1. Decodes.
  for (uint64_t id : order) {
    if (budget <= 0) break;
    Seq& s = seqs_.at(id);
    if (!s.running || int64_t(s.tokens.size()) - s.num_computed - s.num_spec != 1) continue;
    if (1 + s.num_spec > budget) {  // the budget takes only part of the proposals
      const int64_t cut = 1 + s.num_spec - budget;
      s.tokens.resize(s.tokens.size() - size_t(cut));
      s.num_spec -= cut;
    }
    if (grow(s, 1 + s.num_spec)) emit(s, 1 + s.num_spec, true);
  }
  // 2. Prefill chunks of running sequences.
  for (uint64_t id : order) {
    if (budget <= 0) break;
    Seq& s = seqs_.at(id);
    if (!s.running || scheduled.count(id) || int64_t(s.tokens.size()) - s.num_computed < 2) continue;
    int64_t matched = 0;
    match_prefix(s, out, matched);  // blocks other sequences finished since the last chunk
    if (s.num_preemptions == 0) {
      s.cached_tokens += matched;
      stats_.prefix_hit_tokens += matched;
    }
    const int64_t n = std::min(int64_t(s.tokens.size()) - s.num_computed, budget);
    if (grow(s, n)) emit(s, n, false);
  }
  // 3. Admissions.
  while (out.preempted.empty() && budget > 0 && !waiting_.empty() &&
         int64_t(running_.size()) < cfg_.max_num_seqs) {
    Seq& s = seqs_.at(std::get<2>(*waiting_.begin()));
    const size_t copies_before = out.copies.size();
    int64_t matched = 0;
    match_prefix(s, out, matched);
    const int64_t n = std::min(int64_t(s.tokens.size()) - s.num_computed, budget);
    std::vector<int32_t> got;
    if (!take_blocks(blocks_needed(s, n), got)) {  // does not fit yet: undo the match, wait
      release_blocks(s);
      for (size_t i = copies_before; i < out.copies.size(); ++i) {
        pool_.release(out.copies[i].src);
        pending_copy_src_.pop_back();
      }
      out.copies.resize(copies_before);
      break;
    }
    s.blocks.insert(s.blocks.end(), got.begin(), got.end());
    if (s.num_preemptions == 0) {
      stats_.prefix_queried_tokens += int64_t(s.tokens.size());
      s.cached_tokens += matched;
      stats_.prefix_hit_tokens += matched;
    }
    waiting_.erase(rank(s));
    running_.insert(rank(s));
    s.running = true;
    emit(s, n, false);
  }
  for (uint64_t id : order)  // proposals of sequences this step left out are void
    if (auto it = seqs_.find(id); it != seqs_.end() && !scheduled.count(id)) drop_proposals(it->second);
  stats_.computed_tokens += out.num_batched_tokens;
  if (cache_) cache_->take_host_copies(out.host_spills, out.host_loads);
  return out;
}

void Scheduler::drop_proposals(Seq& s) {
  GALE_ASSERT(!s.in_step);
  s.tokens.resize(s.tokens.size() - size_t(s.num_spec));
  s.num_spec = 0;
}

void Scheduler::insert_full_blocks(Seq& s, int64_t upto) {
  const int64_t full = upto / cfg_.block_size;
  if (!cache_ || full <= s.num_inserted) return;
  const int64_t bs = cfg_.block_size;
  std::span<const int32_t> toks =
      std::span<const int32_t>(s.tokens).subspan(size_t(s.num_inserted * bs), size_t((full - s.num_inserted) * bs));
  std::span<int32_t> blks = std::span<int32_t>(s.blocks).subspan(size_t(s.num_inserted), size_t(full - s.num_inserted));
  s.cache_node = cache_->insert(s.cache_node, toks, blks);
  s.num_inserted = full;
}

void Scheduler::commit(const SchedulerOutput& out) {
  for (const ScheduledSeq& ss : out.seqs) {
    auto it = seqs_.find(ss.id);
    if (it == seqs_.end()) continue;  // finished in between (abort)
    Seq& s = it->second;
    GALE_ASSERT(s.running && s.in_step && s.num_computed == ss.start_pos);
    s.in_step = false;
    s.num_computed += ss.num_tokens;
    // Proposals are computed now but may be rolled back: their blocks wait for a later commit.
    insert_full_blocks(s, s.num_computed - s.num_spec);
    s.num_spec = 0;
  }
  for (int32_t b : pending_copy_src_) pool_.release(b);
  pending_copy_src_.clear();
}

void Scheduler::append_token(uint64_t id, int32_t token) { seqs_.at(id).tokens.push_back(token); }

bool Scheduler::can_propose(uint64_t id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  const Seq& s = it->second;
  return s.running && !s.in_step && s.num_spec == 0 && int64_t(s.tokens.size()) - s.num_computed == 1;
}

void Scheduler::propose(uint64_t id, std::span<const int32_t> tokens) {
  GALE_ASSERT(can_propose(id));
  Seq& s = seqs_.at(id);
  s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
  s.num_spec = int64_t(tokens.size());
}

void Scheduler::set_token(uint64_t id, int64_t pos, int32_t token) {
  Seq& s = seqs_.at(id);
  GALE_ASSERT(pos >= s.num_computed && pos < int64_t(s.tokens.size()));
  s.tokens[size_t(pos)] = token;
}

void Scheduler::rollback(uint64_t id, int64_t n) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) throw Error("rollback: no sequence " + std::to_string(id));
  Seq& s = it->second;
  const int64_t len = int64_t(s.tokens.size());
  if (n < 0) throw Error("rollback: the number of tokens must be >= 0 (got " + std::to_string(n) + ")");
  if (n >= len)
    throw Error("rollback of " + std::to_string(n) + " tokens would leave sequence " + std::to_string(id) +
                " empty (it has " + std::to_string(len) + ")");
  // Its step may still be writing the KV of the tokens being removed, and commit() would count them.
  if (s.in_step) throw Error("rollback: sequence " + std::to_string(id) + " is in a step not yet committed");
  if (n == 0) return;
  const int64_t bs = cfg_.block_size;
  s.tokens.resize(size_t(len - n));
  s.num_computed = std::min(s.num_computed, len - n);
  const int64_t full = s.num_computed / bs;
  if (s.num_inserted > full) {
    GALE_ASSERT(cache_);
    // Block `full` is in the cache: the sequence would write its positions past num_computed, so
    // it recomputes the block's first tokens into a block of its own instead (a copy-on-write
    // here would need a free block, which a rollback should never wait for).
    s.num_computed = full * bs;
    for (int64_t i = full; i < s.num_inserted; ++i) s.cache_node = cache_->parent(s.cache_node);
    s.num_inserted = full;
  }
  // Blocks past the last computed position; the partially used last block stays.
  const int64_t keep = ceil_div(s.num_computed, bs);
  GALE_ASSERT(int64_t(s.blocks.size()) >= keep);
  while (int64_t(s.blocks.size()) > keep) {
    pool_.release(s.blocks.back());  // a cached block stays in the cache for others
    s.blocks.pop_back();
  }
}

void Scheduler::finish(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  Seq& s = it->second;
  release_blocks(s);
  (s.running ? running_ : waiting_).erase(rank(s));
  seqs_.erase(it);
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st = stats_;
  st.running = int64_t(running_.size());
  st.waiting = int64_t(waiting_.size());
  st.blocks_total = pool_.num_blocks();
  st.blocks_free = pool_.num_free();
  st.blocks_cached = cache_ ? cache_->num_cached_blocks() : 0;
  st.host_blocks_total = cache_ ? cfg_.num_host_blocks : 0;
  st.host_blocks_cached = cache_ ? cache_->num_host_cached_blocks() : 0;
  st.host_spilled_blocks = cache_ ? cache_->num_spilled_blocks() : 0;
  st.host_loaded_blocks = cache_ ? cache_->num_loaded_blocks() : 0;
  return st;
}

void Scheduler::clear_prefix_cache() {
  if (cache_) cache_->clear();
}

void Scheduler::set_kv_event_sink(KvCacheEventSink sink) {
  if (cache_) cache_->set_event_sink(std::move(sink));
}

}  // namespace gale
