// The engine step: schedule -> block copies -> one forward over every scheduled token -> sample
// each sequence that reached its last token -> stop conditions and streamed text.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "runtime/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace gale {

namespace {

// Length of the longest prefix of s (at most n bytes) that ends on a UTF-8 character boundary.
size_t utf8_safe_prefix(std::string_view s, size_t n) {
  while (n > 0 && n < s.size() && (uint8_t(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

// MemAvailable of /proc/meminfo in bytes (0 when unknown).
int64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// Context a request may fill: max_position_embeddings, except for dynamic RoPE (built to run
// past it) and configs without one.
int64_t context_limit(const ModelConfig& c) {
  if (c.max_position_embeddings <= 0 || c.rope.type == RopeType::Dynamic) return 0;
  return c.max_position_embeddings;
}

// What Sampler::sample would do with the sequence's next logits, for Backend::sample_rows;
// draws the token's uniform now (the generator advances as on the host path).
RowSampling row_sampling(Sampler& s) {
  const SamplingParams& p = s.params();
  RowSampling r;
  r.temperature = p.temperature;
  r.top_k = p.top_k;
  r.top_p = p.top_p;
  r.min_p = p.min_p;
  r.repetition_penalty = p.repetition_penalty;
  r.presence_penalty = p.presence_penalty;
  r.frequency_penalty = p.frequency_penalty;
  r.u = s.next_uniform();
  r.seen_ids = s.seen_ids();
  r.output_ids = s.output_ids();
  r.output_counts = s.output_counts();
  return r;
}

}  // namespace

struct Engine::Impl {
  struct Request {
    uint64_t id = 0;
    RequestParams p;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<StreamDecoder> stream;
    std::vector<int32_t> out_ids;
    std::string text;      // generated text so far (cut at a stop string)
    size_t emitted = 0;    // bytes of text already returned
    size_t max_stop = 0;   // longest stop string
  };

  Transformer& model;
  const Tokenizer* tok;
  EngineConfig cfg;
  std::unique_ptr<KVCache> kv;
  std::unique_ptr<Scheduler> sched;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> reqs;
  std::vector<RequestOutput> pending;  // finished outside a step (abort, max_tokens 0)
  uint64_t next_id = 1;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  std::vector<float> logits, raw;
  std::vector<int32_t> device_ids;  // per sampled row, when the backend chose them
  std::vector<RowSampling> device_rows;
  // GALE_PROFILE=1: where a step's wall time goes, printed when the engine is destroyed.
  bool profile = std::getenv("GALE_PROFILE") != nullptr;
  int64_t prof_steps = 0, prof_tokens = 0;
  double prof_schedule = 0, prof_forward = 0, prof_after = 0;
  std::vector<int32_t> top_idx;

  Impl(Transformer& m, const Tokenizer* t, EngineConfig c) : model(m), tok(t), cfg(c) {}

  RequestOutput output_of(const Request& r) const {
    RequestOutput o;
    o.id = r.id;
    o.prompt_tokens = int64_t(r.p.prompt.size());
    o.completion_tokens = int64_t(r.out_ids.size());
    o.cached_prompt_tokens = sched->contains(r.id) ? sched->num_cached_tokens(r.id) : 0;
    return o;
  }

  void emit_upto(Request& r, size_t n, RequestOutput& o) {
    if (n > r.emitted) {
      o.new_text.append(r.text, r.emitted, n - r.emitted);
      r.emitted = n;
    }
  }

  // Appends the text of a new id; true when a stop string ended the request (text cut before it).
  bool push_text(Request& r, int32_t id, RequestOutput& o) {
    if (!r.stream) return false;
    r.text += r.stream->push(id);
    if (r.max_stop == 0) {
      emit_upto(r, r.text.size(), o);
      return false;
    }
    // A new match can only start where the held-back text starts.
    size_t from = r.emitted >= r.max_stop ? r.emitted - r.max_stop + 1 : 0;
    size_t hit = std::string::npos;
    for (const std::string& s : r.p.stop) {
      if (s.empty()) continue;
      size_t f = r.text.find(s, from);
      if (f != std::string::npos && f < hit) hit = f;
    }
    if (hit != std::string::npos) {
      r.text.resize(hit);
      emit_upto(r, hit, o);
      return true;
    }
    // Hold back what could still be the start of a stop string.
    size_t safe = r.text.size() >= r.max_stop - 1 ? r.text.size() - (r.max_stop - 1) : 0;
    emit_upto(r, utf8_safe_prefix(r.text, std::max(safe, r.emitted)), o);
    return false;
  }

  // Log-softmax of the model's logits (before penalties and temperature, as vLLM's default
  // "raw" logprobs): the chosen id's and the top k.
  TokenLogprob logprob_of(std::span<const float> row, int32_t id, int k) {
    float mx = *std::max_element(row.begin(), row.end());
    double sum = 0;
    for (float v : row) sum += std::exp(double(v - mx));
    const float lse = mx + float(std::log(sum));
    TokenLogprob lp;
    lp.id = id;
    lp.logprob = row[size_t(id)] - lse;
    k = std::min<int>(k, int(row.size()));
    if (k > 0) {
      top_idx.resize(row.size());
      for (size_t i = 0; i < row.size(); ++i) top_idx[i] = int32_t(i);
      std::partial_sort(top_idx.begin(), top_idx.begin() + k, top_idx.end(), [&](int32_t a, int32_t b) {
        return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
      });
      for (int i = 0; i < k; ++i) lp.top.push_back({top_idx[size_t(i)], row[size_t(top_idx[size_t(i)])] - lse});
    }
    return lp;
  }

  void finish(Request& r, RequestOutput& o, const std::string& reason, bool stop_string_hit) {
    if (r.stream && !stop_string_hit) {  // release held-back and incomplete trailing text
      r.text += r.stream->flush();
      emit_upto(r, r.text.size(), o);
    }
    o.finished = true;
    o.finish_reason = reason;
    sched->finish(r.id);
  }
};

Engine::Engine(Transformer& model, const Tokenizer* tok, EngineConfig cfg) : impl_(new Impl(model, tok, cfg)) {
  const ModelConfig& mc = model.config();
  if (cfg.block_size <= 0) throw Error("block size must be > 0");
  if (cfg.max_num_seqs <= 0) throw Error("--max-num-seqs must be > 0");
  if (cfg.max_num_batched_tokens <= 0) throw Error("--max-num-batched-tokens must be > 0");
  if (cfg.kv_cache_bytes < 0) throw Error("--kv-cache-memory must be >= 0");
  const int64_t block_bytes = int64_t(KVCache::bytes_per_token(mc, model.kv_dtype())) * cfg.block_size;
  int64_t num_blocks;
  if (cfg.kv_cache_bytes > 0) {
    num_blocks = cfg.kv_cache_bytes / block_bytes;
    if (num_blocks < 1)
      throw Error("--kv-cache-memory " + std::to_string(cfg.kv_cache_bytes) + " holds no KV block (one is " +
                  std::to_string(block_bytes) + " bytes)");
  } else if (int64_t budget = model.backend().default_kv_budget(); budget >= 0) {
    // GPU: what --gpu-memory-utilization leaves after the weights, capped at what max_num_seqs
    // full-context sequences can use.
    const int64_t ctx = context_limit(mc) > 0 ? context_limit(mc) : 4096;
    const int64_t per_seq = (ctx + cfg.block_size - 1) / cfg.block_size;
    num_blocks = std::min(budget / block_bytes, per_seq * cfg.max_num_seqs);
    if (num_blocks < 1)
      throw Error("no GPU memory is left for the KV cache after the weights on " + model.backend().name() +
                  " (raise --gpu-memory-utilization or use a smaller model)");
  } else {
    // Default: what max_num_seqs sequences of the full context need, but no more than 40 % of
    // the memory available now (the mapping is committed page by page as blocks fill, so an
    // unused share costs nothing), and at least one full-context sequence.
    const int64_t ctx = context_limit(mc) > 0 ? context_limit(mc) : 4096;
    const int64_t per_seq = (ctx + cfg.block_size - 1) / cfg.block_size;
    const int64_t share = available_memory() * 2 / 5 / block_bytes;
    num_blocks = std::max(per_seq, std::min(per_seq * cfg.max_num_seqs, share > 0 ? share : per_seq));
  }
  impl_->kv = std::make_unique<KVCache>(mc, num_blocks, cfg.block_size, model.kv_dtype(), &model.backend());
  SchedulerConfig sc;
  sc.num_blocks = num_blocks;
  sc.block_size = cfg.block_size;
  sc.max_num_seqs = cfg.max_num_seqs;
  sc.max_num_batched_tokens = cfg.max_num_batched_tokens;
  sc.prefix_cache = cfg.prefix_cache;
  impl_->sched = std::make_unique<Scheduler>(sc);
}

Engine::~Engine() {
  const Impl& m = *impl_;
  if (m.profile && m.prof_steps > 0)
    std::fprintf(stderr,
                 "engine: %lld steps, %.1f tokens/step; per step: schedule %.3f ms, forward %.3f ms, "
                 "commit+sample+text %.3f ms\n",
                 (long long)m.prof_steps, double(m.prof_tokens) / double(m.prof_steps),
                 1e3 * m.prof_schedule / double(m.prof_steps), 1e3 * m.prof_forward / double(m.prof_steps),
                 1e3 * m.prof_after / double(m.prof_steps));
  delete impl_;
}

uint64_t Engine::add_request(RequestParams p) {
  Impl& m = *impl_;
  const ModelConfig& mc = m.model.config();
  if (p.prompt.empty()) throw Error("the prompt is empty");
  if (p.max_tokens < 0) throw Error("max_tokens must be >= 0");
  for (int32_t id : p.prompt)
    if (id < 0 || id >= mc.vocab_size)
      throw Error("token id " + std::to_string(id) + " is out of range (vocabulary size " +
                  std::to_string(mc.vocab_size) + ")");
  const int64_t total = int64_t(p.prompt.size()) + p.max_tokens;
  if (int64_t ctx = context_limit(mc); ctx > 0 && total > ctx)
    throw Error("the prompt (" + std::to_string(p.prompt.size()) + " tokens) plus max_tokens (" +
                std::to_string(p.max_tokens) + ") exceeds the model's context of " + std::to_string(ctx) + " tokens");
  const int64_t blocks = (total + m.cfg.block_size - 1) / m.cfg.block_size;
  if (blocks > m.sched->pool().num_blocks())
    throw Error("the request needs " + std::to_string(blocks) + " KV blocks but the cache has " +
                std::to_string(m.sched->pool().num_blocks()) + "; raise --kv-cache-memory");
  if (p.top_logprobs > mc.vocab_size) throw Error("top_logprobs exceeds the vocabulary size");
  validate(p.sampling);

  auto r = std::make_unique<Impl::Request>();
  r->id = m.next_id++;
  r->sampler = std::make_unique<Sampler>(p.sampling, p.prompt);
  if (m.tok) r->stream = std::make_unique<StreamDecoder>(*m.tok, /*skip_special_tokens=*/true);
  for (const std::string& s : p.stop) r->max_stop = std::max(r->max_stop, s.size());
  r->p = std::move(p);
  const uint64_t id = r->id;
  m.prompt_tokens_total += int64_t(r->p.prompt.size());
  if (r->p.max_tokens == 0) {  // nothing to generate
    RequestOutput o = m.output_of(*r);
    o.finished = true;
    o.finish_reason = "length";
    m.pending.push_back(std::move(o));
    return id;
  }
  m.sched->add(id, r->p.prompt, r->p.priority);
  m.reqs.emplace(id, std::move(r));
  return id;
}

void Engine::abort(uint64_t id) {
  Impl& m = *impl_;
  auto it = m.reqs.find(id);
  if (it == m.reqs.end()) return;
  RequestOutput o = m.output_of(*it->second);
  o.finished = true;
  o.finish_reason = "abort";
  m.sched->finish(id);
  m.reqs.erase(it);
  m.pending.push_back(std::move(o));
}

std::vector<RequestOutput> Engine::step() {
  Impl& m = *impl_;
  using clk = std::chrono::steady_clock;
  const auto t0 = clk::now();
  std::vector<RequestOutput> outs = std::move(m.pending);
  m.pending.clear();
  SchedulerOutput so = m.sched->schedule();
  for (const BlockCopy& c : so.copies) m.kv->copy_block(c.src, c.dst);
  std::vector<SeqStep> steps;
  steps.reserve(so.seqs.size());
  for (const ScheduledSeq& s : so.seqs) {
    std::span<const int32_t> toks = m.sched->tokens(s.id);
    steps.push_back({toks.subspan(size_t(s.start_pos), size_t(s.num_tokens)), s.start_pos, s.block_table,
                     s.sample ? SeqStep::Logits::Last : SeqStep::Logits::None});
  }
  // When every sequence sampled in this step is plain greedy without logprobs, only the argmax
  // of each row is needed: the backend computes it where the logits are (on a GPU they never
  // cross to the host). Without logprobs, a backend with sample_rows (the GPU) draws the other
  // tokens there too; the CPU backend keeps Sampler::sample.
  bool greedy = true, on_device = m.model.backend().has_sample_rows();
  for (const ScheduledSeq& s : so.seqs) {
    if (!s.sample) continue;
    const Impl::Request& r = *m.reqs.at(s.id);
    greedy = greedy && r.sampler->plain_greedy() && r.p.top_logprobs < 0;
    on_device = on_device && r.p.top_logprobs < 0;
  }
  const auto t1 = clk::now();
  if (!steps.empty()) {
    if (greedy) {
      m.model.forward_argmax(steps, *m.kv, m.device_ids);
    } else if (on_device) {
      m.device_rows.clear();
      for (const ScheduledSeq& s : so.seqs)
        if (s.sample) m.device_rows.push_back(row_sampling(*m.reqs.at(s.id)->sampler));
      m.model.forward_sample(steps, *m.kv, m.device_rows, m.device_ids);
    } else {
      m.model.forward(steps, *m.kv, m.logits);
    }
  }
  const auto t2 = clk::now();
  m.sched->commit(so);

  const size_t V = size_t(m.model.config().vocab_size);
  size_t row = 0;
  for (const ScheduledSeq& s : so.seqs) {
    if (!s.sample) continue;
    Impl::Request& r = *m.reqs.at(s.id);
    int32_t id;
    if (greedy || on_device) {
      id = m.device_ids[row++];
      r.sampler->accept(id);
    } else {
      std::span<float> lg(m.logits.data() + row * V, V);
      ++row;
      if (r.p.top_logprobs >= 0) m.raw.assign(lg.begin(), lg.end());
      id = r.sampler->sample(lg);
    }
    r.out_ids.push_back(id);
    ++m.generation_tokens_total;
    RequestOutput o = m.output_of(r);
    o.new_ids.push_back(id);
    if (r.p.top_logprobs >= 0) o.logprobs.push_back(m.logprob_of(m.raw, id, r.p.top_logprobs));
    const bool eos = std::find(r.p.eos_ids.begin(), r.p.eos_ids.end(), id) != r.p.eos_ids.end();
    if (eos && !r.p.ignore_eos) {
      m.finish(r, o, "stop", false);
    } else if (m.push_text(r, id, o)) {
      m.finish(r, o, "stop", true);
    } else if (int64_t(r.out_ids.size()) >= r.p.max_tokens) {
      m.finish(r, o, "length", false);
    } else {
      m.sched->append_token(s.id, id);
    }
    const bool done = o.finished;
    outs.push_back(std::move(o));
    if (done) m.reqs.erase(s.id);
  }
  if (m.profile) {
    const auto t3 = clk::now();
    auto sec = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    m.prof_steps += 1;
    m.prof_tokens += so.num_batched_tokens;
    m.prof_schedule += sec(t0, t1);
    m.prof_forward += sec(t1, t2);
    m.prof_after += sec(t2, t3);
  }
  return outs;
}

bool Engine::has_unfinished() const { return !impl_->reqs.empty() || !impl_->pending.empty(); }

EngineStats Engine::stats() const {
  SchedulerStats s = impl_->sched->stats();
  EngineStats e;
  e.running = s.running;
  e.waiting = s.waiting;
  e.kv_blocks_total = s.blocks_total;
  e.kv_blocks_free = s.blocks_free;
  e.kv_blocks_cached = s.blocks_cached;
  e.prefix_cache_queried_tokens = s.prefix_queried_tokens;
  e.prefix_cache_hit_tokens = s.prefix_hit_tokens;
  e.preemptions = s.preemptions;
  e.computed_tokens = s.computed_tokens;
  e.prompt_tokens_total = impl_->prompt_tokens_total;
  e.generation_tokens_total = impl_->generation_tokens_total;
  return e;
}

void Engine::clear_prefix_cache() { impl_->sched->clear_prefix_cache(); }

const EngineConfig& Engine::config() const { return impl_->cfg; }

}  // namespace gale
