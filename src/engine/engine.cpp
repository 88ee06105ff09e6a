// The engine step: schedule -> block copies -> one forward over every scheduled token -> sample
// each sequence that reached its last token -> stop conditions and streamed text.
//
// Overlap (EngineConfig::overlap, GALE_OVERLAP): a step whose ids come from the device (greedy
// or on-device sampling) is launched, and step() returns before it is waited for. The next
// step() then: waits for the ids; does the bookkeeping the following schedule depends on
// (scheduler commit, Sampler::accept, eos, max_tokens, append_token, and the text and stop
// strings of requests that have stop strings, since a stop string ends the sequence); schedules
// and launches the following step; and only then detokenizes the other requests and builds
// the outputs, while the device runs. Each step is scheduled after the previous one's
// bookkeeping, so no finished sequence is ever in a launched step, and the scheduler sees the
// same calls in the same order as without overlap. Steps that need logits on the host
// (logprobs; sampling on the CPU backend) run synchronously: the next step is launched ahead
// only while no live request needs them.
//
// Failures stay with whoever caused them. A request whose own work throws (its sampler, its
// detokenization, its stop strings) finishes alone with finish_reason "error": its blocks go
// back as an abort's do (after the step in flight, when that step has it). A forward pass
// that throws (launch, wait or the host path) cannot be pinned on one request: the sequences
// scheduled in that step finish with "error", are never committed (their KV is not trusted,
// so it never enters the prefix cache), and the waiting and preempted ones run on. Either way
// the engine stays consistent and step() returns normally.
#include "engine/engine.h"

#include <algorithm>
#include <map>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "core/checked_math.h"
#include "core/error.h"
#include "runtime/scheduler.h"
#include "runtime/spec_decode.h"
#include "runtime/token_proposer.h"
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

// The GPU's KV budget (what --gpu-memory-utilization leaves after the weights) as each model's
// backend sees it, the smaller; -1 when the target's backend has none (CPU).
int64_t default_budget(const Transformer& model, const Transformer* draft) {
  int64_t budget = model.backend().default_kv_budget();
  if (budget >= 0 && draft)
    if (int64_t d = draft->backend().default_kv_budget(); d >= 0) budget = std::min(budget, d);
  return budget;
}

}  // namespace

int64_t context_limit(const ModelConfig& c) {
  if (c.max_position_embeddings <= 0 || c.rope.type == RopeType::Dynamic) return 0;
  return c.max_position_embeddings;
}

namespace {

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

// The message of the exception being handled (call inside a catch block); never empty.
std::string current_error() {
  try {
    throw;
  } catch (const std::exception& e) {
    return *e.what() ? e.what() : "unknown error";
  } catch (...) {
    return "unknown error";
  }
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
    bool host_logits = false;  // its steps need the logits on the host (logprobs; sampling or a grammar on the CPU backend)
    std::unique_ptr<GrammarMatcher> matcher;  // constrained decoding: the grammar's state
    std::vector<uint32_t> mask;               // its token mask [words of vocab]
    // Prefix-cache hits as the last schedule before the step in flight left them (an abort
    // while the step is in flight reports these, as it would have without overlap).
    uint64_t flight = 0;   // serial of the last step that scheduled or preempted it
    int64_t cached_before = 0, cached_now = 0;
    int64_t rollback_pending = 0;    // tokens to roll back once the step in flight is collected
    std::vector<float> draft_logits;  // the draft's logits where its last returned token was sampled
    // Speculative decoding: the draft's distributions q [num_spec, vocab] of the proposals in the
    // step being run (sampled requests; greedy ones propose the draft's argmax, a point mass), and
    // the generator the draft draws them with (its own, so the target's draws are undisturbed).
    std::vector<float> spec_q;
    std::unique_ptr<Rng> draft_rng;
    // With speculation on, the draft's KV is right for this request's positions [0, draft_pos).
    // It starts at 0 even after a prefix-cache hit (another request's blocks may never have had
    // the draft run over them), so the first verify's catch-up covers the whole context.
    int64_t draft_pos = 0;
  };

  // A scheduled step whose ids have not been collected yet.
  struct Flight {
    uint64_t serial = 0;
    SchedulerOutput so;
    enum class Path { Greedy, Device, Host } path = Path::Host;
    bool launched = false;          // the model owes wait_ids()
    std::vector<uint64_t> aborted;  // abort()ed meanwhile: finished in the scheduler after the wait
    std::vector<uint64_t> rollbacks;  // rollback()ed meanwhile: applied after the commit
    std::vector<float> draft_logits;  // the draft's logit rows of the step [sampled rows, vocab]
    std::string error;              // the forward pass threw: every scheduled sequence fails
    double launch_seconds = 0;      // the launch (CPU: the whole forward), for the k model
  };

  // One sampled token's output (several with speculation), built in two halves around the next launch.
  struct Produced {
    Request* r = nullptr;
    RequestOutput o;
    std::vector<int32_t> ids;
    std::vector<int32_t> push_ids;  // those whose text is still to be decoded (requests without stop strings)
    bool push = false;
    bool flush = false;  // finished: release held-back text afterwards
  };

  Transformer& model;
  const Tokenizer* tok;
  EngineConfig cfg;
  std::vector<std::pair<int32_t, int32_t>> follower_copies;  // tell_followers' scratch
  std::vector<std::pair<int32_t, int32_t>> host_copy_pairs;  // launch()'s scratch: (block, slot)
  Transformer* draft = nullptr;
  std::unique_ptr<KVCache> kv;
  std::unique_ptr<KVCache> draft_kv;  // same blocks and block tables as kv (see Engine's constructor)
  std::unique_ptr<Scheduler> sched;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> reqs;
  std::vector<RequestOutput> pending;  // finished outside a step (abort, max_tokens 0)
  uint64_t next_id = 1;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0;
  std::vector<float> logits, raw;
  std::vector<int32_t> device_ids;  // per sampled row, when the backend chose them
  std::vector<RowSampling> device_rows;
  bool overlap;
  std::optional<Flight> flight;
  uint64_t flight_serial = 0;
  int64_t n_host_logits = 0;                   // live requests with host_logits
  // Constrained decoding: one compiler (vocabulary view + cache of compiled grammars) per set of
  // eos ids (the ids a grammar allows where it is complete); usually one.
  std::map<std::vector<int32_t>, std::unique_ptr<GrammarCompiler>> grammar_compilers;
  std::shared_ptr<const CompiledGrammar> compile_constraint(const ConstraintSpec& c, const std::vector<int32_t>& eos) {
    if (!tok) throw Error("constrained decoding needs the model's tokenizer");
    auto& gc = grammar_compilers[eos];
    if (!gc) gc = std::make_unique<GrammarCompiler>(std::make_shared<const TokenTable>(*tok, model.config().vocab_size, eos));
    return gc->compile(c);
  }
  std::vector<Produced> produced;              // the step being finished
  std::vector<std::unique_ptr<Request>> done;  // finished in it, kept until their text is out
  // GALE_PROFILE=1: where a step's wall time goes, printed when the engine is destroyed.
  bool profile = std::getenv("GALE_PROFILE") != nullptr;
  int64_t steps_ahead = 0;  // launched before the previous step's outputs
  int64_t prof_steps = 0, prof_tokens = 0;
  double prof_schedule = 0, prof_launch = 0, prof_wait = 0, prof_book = 0, prof_text = 0;
  std::vector<int32_t> top_idx;
  // Speculative decoding (null / 0 when off).
  std::unique_ptr<SpecController> spec;
  std::shared_ptr<TokenProposer> proposer;  // model-free; else the draft proposes
  int64_t spec_verifies = 0, spec_proposed = 0, spec_accepted = 0, spec_k = 0;
  double spec_seconds = 0;                  // proposing, in all
  double step_proposer_seconds = 0;         // proposing, in the step being run
  double step_round_seconds = 0;            // of which its rounds without a catch-up (the k model's cost)
  uint64_t probe_turn = 0;
  int64_t step_rounds = 0, step_batch = 0;  // proposer rounds in the step being run, for how many requests
  std::vector<int32_t> spec_buf, spec_idx;
  std::vector<double> spec_dist;
  std::vector<float> spec_logits;

  Impl(Transformer& m, const Tokenizer* t, EngineConfig c, Transformer* d) : model(m), tok(t), cfg(c), draft(d) {
    static const bool env_overlap = [] {
      const char* v = std::getenv("GALE_OVERLAP");
      return !(v && std::string(v) == "0");
    }();
    overlap = cfg.overlap && env_overlap;
  }

  static double since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }

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

  void erase_request(std::unordered_map<uint64_t, std::unique_ptr<Request>>::iterator it,
                     std::unique_ptr<Request>* keep) {
    if (it->second->host_logits) --n_host_logits;
    if (proposer) {
      const Request& r = *it->second;
      std::vector<int32_t> ctx(r.p.prompt);
      ctx.insert(ctx.end(), r.out_ids.begin(), r.out_ids.end());
      try {
        proposer->finish(r.id, ctx);
      } catch (...) {  // a proposer's failure only costs its proposals
      }
    }
    if (keep) *keep = std::move(it->second);
    reqs.erase(it);
  }

  // Schedules the next step and starts it: launched (ids from the device, waited for by
  // collect()) or, when it needs host logits, run to the logits now.
  void start() {
    using clk = std::chrono::steady_clock;
    const auto t0 = clk::now();
    Flight f;
    f.serial = ++flight_serial;
    step_proposer_seconds = 0;
    step_rounds = step_batch = 0;
    step_round_seconds = 0;
    if (spec) propose();
    f.so = sched->schedule();
    const auto t1 = clk::now();
    auto note = [&](uint64_t id) {
      Request& r = *reqs.at(id);
      r.flight = f.serial;
      r.cached_before = r.cached_now;
      r.cached_now = sched->num_cached_tokens(id);
    };
    for (const ScheduledSeq& s : f.so.seqs) note(s.id);
    for (uint64_t id : f.so.preempted) note(id), reqs.at(id)->draft_pos = 0;
    // From here on the step is scheduled: whatever throws fails its sequences (collect() sees
    // f.error), never the engine.
    try {
      if (spec && !proposer) draft_propose(f.so);
      const auto tl = clk::now();
      launch(f);
      f.launch_seconds = since(tl);
    } catch (...) {
      f.launched = false;
      f.error = current_error();
    }
    flight = std::move(f);
    if (profile) {
      prof_schedule += std::chrono::duration<double>(t1 - t0).count();
      prof_launch += since(t1);
    }
  }

  // The block copies and the forward of a scheduled step: launched, or run to the logits.
  void launch(Flight& f) {
    if (cfg.followers && (!f.so.copies.empty() || !f.so.seqs.empty())) tell_followers(f);
    // The host tier's copies first: a spill reads a block before this step's loads, copies and
    // forward may write it; a load fills a block before the forward reads it.
    for (auto* list : {&f.so.host_spills, &f.so.host_loads}) {
      if (list->empty()) continue;
      host_copy_pairs.clear();
      for (const PrefixCache::HostCopy& c : *list) host_copy_pairs.emplace_back(c.block, c.slot);
      for (KVCache* cache : {kv.get(), draft_kv.get()}) {
        if (!cache) continue;
        if (list == &f.so.host_spills) cache->copy_to_host(host_copy_pairs);
        else cache->copy_from_host(host_copy_pairs);
      }
    }
    for (const BlockCopy& c : f.so.copies) {
      kv->copy_block(c.src, c.dst);
      if (draft_kv) draft_kv->copy_block(c.src, c.dst);
    }
    std::vector<SeqStep> steps, draft_steps;
    steps.reserve(f.so.seqs.size());
    bool any_spec = false;
    for (const ScheduledSeq& s : f.so.seqs) {
      std::span<const int32_t> toks = sched->tokens(s.id);
      // rope_len: every known token, so the chunks of one prompt rotate alike ("dynamic" RoPE).
      // A verify chunk wants logits at each position: the last accepted token's and each proposal's.
      steps.push_back({toks.subspan(size_t(s.start_pos), size_t(s.num_tokens)), s.start_pos, s.block_table,
                       s.num_spec > 0 ? SeqStep::Logits::All : s.sample ? SeqStep::Logits::Last : SeqStep::Logits::None,
                       int64_t(toks.size())});
      any_spec = any_spec || s.num_spec > 0;
      // Speculation on: the draft's KV only has to be right where it proposes from, so it runs
      // only in draft_propose(), whose first round catches up from where it stopped; a step (or
      // a request) that does not speculate does not pay for the draft.
      if (draft && !spec) draft_steps.push_back(steps.back());
    }
    // When every sequence sampled in this step is plain greedy without logprobs, only the argmax
    // of each row is needed: the backend computes it where the logits are (on a GPU they never
    // cross to the host). Without logprobs, a backend with sample_rows (the GPU) draws the other
    // tokens there too; the CPU backend keeps Sampler::sample.
    bool greedy = true, on_device = model.backend().has_sample_rows();
    for (const ScheduledSeq& s : f.so.seqs) {
      if (!s.sample) continue;
      const Request& r = *reqs.at(s.id);
      greedy = greedy && r.sampler->plain_greedy() && r.p.top_logprobs < 0 && !r.matcher;
      on_device = on_device && r.p.top_logprobs < 0;  // a grammar's mask goes with the row (RowSampling::allowed)
    }
    // A verify needs each position's full distribution (speculative sampling) unless greedy:
    // the device's one draw per row is not enough.
    if (any_spec) on_device = false;
    f.path = greedy ? Flight::Path::Greedy : on_device ? Flight::Path::Device : Flight::Path::Host;
    if (!steps.empty()) {
      if (f.path == Flight::Path::Greedy) {
        model.launch_argmax(steps, *kv);
        f.launched = true;
      } else if (f.path == Flight::Path::Device) {
        device_rows.clear();
        for (const ScheduledSeq& s : f.so.seqs) {
          if (!s.sample) continue;
          Request& r = *reqs.at(s.id);
          device_rows.push_back(row_sampling(*r.sampler));
          if (r.matcher) {  // the mask of the state after the last collected token (collect() ran before this launch)
            r.mask.resize(mask_words(model.config().vocab_size));
            r.matcher->fill_mask(r.mask);
            device_rows.back().allowed = r.mask;
          }
        }
        model.launch_sample(steps, *kv, device_rows);
        f.launched = true;
      } else {
        model.forward(steps, *kv, logits);
      }
      // The draft fills its cache over the same tokens and blocks. Once the target's launch has
      // returned, a failure here must still let collect() wait for it: it fails the step there.
      if (draft && !draft_steps.empty()) {
        try {
          draft->forward(draft_steps, *draft_kv, f.draft_logits);
        } catch (...) {
          f.error = current_error();
        }
      }
    }
  }

  // The step's plan for the other ranks of a tensor-parallel group: the same copies and the same
  // SeqSteps launch() builds below, so they run the same forward.
  void tell_followers(const Flight& f) {
    follower_copies.clear();
    for (const BlockCopy& c : f.so.copies) follower_copies.emplace_back(c.src, c.dst);
    std::vector<SeqStep> steps;
    steps.reserve(f.so.seqs.size());
    for (const ScheduledSeq& s : f.so.seqs) {
      std::span<const int32_t> toks = sched->tokens(s.id);
      steps.push_back({toks.subspan(size_t(s.start_pos), size_t(s.num_tokens)), s.start_pos, s.block_table,
                       s.sample ? SeqStep::Logits::Last : SeqStep::Logits::None, int64_t(toks.size())});
    }
    cfg.followers->step(follower_copies, steps);
  }

  // Waits for the step in flight and does what the next schedule depends on; the rest of each
  // output (text of requests without stop strings, flushes) is left in `produced`.
  void collect(Flight& f) {
    using clk = std::chrono::steady_clock;
    const auto t0 = clk::now();
    if (f.launched) {
      try {
        model.wait_ids(device_ids);
      } catch (...) {
        f.error = current_error();
      }
    }
    const auto t1 = clk::now();
    if (!f.error.empty()) return fail_step(f);
    sched->commit(f.so);
    for (uint64_t id : f.aborted) sched->finish(id);
    size_t row = 0, drow = 0;
    for (const ScheduledSeq& s : f.so.seqs) {
      if (!s.sample) continue;
      const size_t at = row;
      row += size_t(1 + s.num_spec);  // a verify has a row per position
      const size_t dat = s.num_spec > 0 ? SIZE_MAX : drow++;
      auto it = reqs.find(s.id);
      if (it == reqs.end()) continue;  // aborted while in flight: its token is dropped
      Request& r = *it->second;
      if (r.rollback_pending > 0) {  // rolled back while in flight: its token is dropped too
        try {
          if (s.num_spec > 0) sched->rollback(r.id, s.num_spec);  // unverified proposals go first
          const int32_t dropped = token_of(r, f.path, at);
          apply_rollback(r, &dropped);
        } catch (...) {
          fail_request(it, current_error());
        }
        continue;
      }
      if (draft && !spec && dat != SIZE_MAX) {
        const size_t V = size_t(model.config().vocab_size);
        r.draft_logits.assign(f.draft_logits.begin() + ptrdiff_t(dat * V), f.draft_logits.begin() + ptrdiff_t((dat + 1) * V));
      } else if (draft) {
        r.draft_logits.clear();
      }
      Produced d;
      d.r = &r;
      const char* reason = nullptr;
      try {
        reason = s.num_spec > 0 ? verify(r, f.path, at, s, d) : advance(r, f.path, at, d);
      } catch (...) {  // this request's own work failed: it alone ends
        d.o = output_of(r);
        d.push = d.flush = false;
        d.push_ids.clear();
        set_error(d.o, current_error());
        reason = "error";
      }
      if (reason) {
        d.o.finished = true;
        d.o.finish_reason = reason;
        sched->finish(r.id);
        done.emplace_back();
        erase_request(it, &done.back());
      }
      produced.push_back(std::move(d));
    }
    apply_rollbacks(f);
    if (spec) {
      spec->observe_step(f.so.num_batched_tokens, f.launch_seconds + std::chrono::duration<double>(t1 - t0).count());
      spec->observe_proposer(step_batch, step_rounds, step_round_seconds);
    }
    if (profile) {
      prof_steps += 1;
      prof_tokens += f.so.num_batched_tokens;
      prof_wait += std::chrono::duration<double>(t1 - t0).count();
      prof_book += since(t1);
    }
  }

  // The sequence's token of this step (logit row `at`), sampled or accepted.
  int32_t token_of(Request& r, Flight::Path path, size_t at) {
    if (path != Flight::Path::Host) {
      const int32_t id = device_ids[at];
      r.sampler->accept(id);
      // The device drew under the row's mask; a mask that allowed nothing gave a token the
      // grammar refuses, as on the host.
      if (r.matcher && !r.matcher->accept_token(id)) throw Error("grammar: no token of the vocabulary can continue the output");
      return id;
    }
    const size_t V = size_t(model.config().vocab_size);
    std::span<float> lg(logits.data() + at * V, V);
    if (r.p.top_logprobs >= 0) raw.assign(lg.begin(), lg.end());
    if (!r.matcher) return r.sampler->sample(lg);
    r.mask.resize(mask_words(int64_t(V)));
    r.matcher->fill_mask(r.mask);
    apply_token_mask(lg, r.mask);
    const int32_t id = r.sampler->sample(lg);
    // Every id was masked (a grammar complete where the request's eos ids are not in the
    // vocabulary): nothing valid can follow.
    if (!r.matcher->accept_token(id)) throw Error("grammar: no token of the vocabulary can continue the output");
    return id;
  }

  // Rolls r back by r.rollback_pending generated tokens, plus `dropped` when the step just
  // collected sampled one for it (its sampler saw it; the scheduler did not). The scheduler
  // rolls back one token more and gets the last remaining one again, so that token is
  // recomputed and the next one sampled from its logits, as in the run that never had them.
  void apply_rollback(Request& r, const int32_t* dropped) {
    const int64_t n = r.rollback_pending;
    r.rollback_pending = 0;
    std::vector<int32_t> gone(r.out_ids.end() - n, r.out_ids.end());
    if (dropped) gone.push_back(*dropped);
    r.sampler->rollback(gone);
    if (r.matcher) r.matcher->rollback(int(gone.size()));
    r.out_ids.resize(r.out_ids.size() - size_t(n));
    r.draft_logits.clear();
    const int64_t left = int64_t(sched->tokens(r.id).size()) - (n + 1);
    if (r.draft_pos > left) r.draft_pos = left;
    sched->rollback(r.id, n + 1);
    sched->append_token(r.id, r.out_ids.empty() ? r.p.prompt.back() : r.out_ids.back());
  }

  // The rollbacks asked for while f was in flight that collect() has not applied (their
  // requests sampled nothing in f). The scheduler has committed f by now.
  void apply_rollbacks(Flight& f) {
    for (uint64_t id : f.rollbacks) {
      auto it = reqs.find(id);
      if (it == reqs.end() || it->second->rollback_pending == 0) continue;
      try {
        apply_rollback(*it->second, nullptr);
      } catch (...) {
        fail_request(it, current_error());
      }
    }
  }

  // A request whose own bookkeeping failed between steps (no step holds it): it ends alone.
  void fail_request(std::unordered_map<uint64_t, std::unique_ptr<Request>>::iterator it, const std::string& what) {
    Produced d;
    d.r = it->second.get();
    d.o = output_of(*d.r);
    set_error(d.o, what);
    sched->finish(d.r->id);
    done.emplace_back();
    erase_request(it, &done.back());
    produced.push_back(std::move(d));
  }

  // Samples (or accepts) the sequence's token of this step and applies eos, stop strings and
  // max_tokens; returns the finish reason, or null when it runs on (its token appended).
  const char* advance(Request& r, Flight::Path path, size_t at, Produced& d) {
    const int32_t id = token_of(r, path, at);
    d.o = output_of(r);
    const char* reason = take_token(r, id, d);
    d.o.completion_tokens = int64_t(r.out_ids.size());
    if (!reason) sched->append_token(r.id, id);
    return reason;
  }

  // Records a token the request produced (the logits it came from in `raw` when it wants
  // logprobs) and applies eos, stop strings and max_tokens; returns the finish reason, or null.
  const char* take_token(Request& r, int32_t id, Produced& d) {
    r.out_ids.push_back(id);
    ++generation_tokens_total;
    d.ids.push_back(id);
    d.o.new_ids.push_back(id);
    if (r.p.top_logprobs >= 0) d.o.logprobs.push_back(logprob_of(raw, id, r.p.top_logprobs));
    const bool eos = std::find(r.p.eos_ids.begin(), r.p.eos_ids.end(), id) != r.p.eos_ids.end();
    if ((eos && !r.p.ignore_eos) || (r.matcher && r.matcher->is_terminated())) {  // the eos token adds no text
      d.flush = true;
      return "stop";
    }
    if (r.max_stop > 0 && push_text(r, id, d.o)) return "stop";  // a stop string (text cut before it)
    d.push = r.max_stop == 0;
    if (d.push) d.push_ids.push_back(id);
    if (int64_t(r.out_ids.size()) >= r.p.max_tokens) {
      d.flush = true;
      return "length";
    }
    return nullptr;
  }

  // A verify (speculative decoding): rows at..at+k hold the target's logits (or, on the greedy
  // path, argmaxes) after the last accepted token and after each of the k proposals. Takes the
  // accepted proposals and the target's token after them (runtime/spec_decode.h), one at a time
  // so eos, stop strings and max_tokens cut where plain decoding would; then rolls the rejected
  // proposals back in the scheduler (their KV is overwritten when the sequence gets there) and
  // appends the target's token, as a decode step would have.
  const char* verify(Request& r, Flight::Path path, size_t at, const ScheduledSeq& s, Produced& d) {
    const int64_t k = s.num_spec;
    const size_t V = size_t(model.config().vocab_size);
    std::span<const int32_t> toks = sched->tokens(r.id);
    const std::vector<int32_t> props(toks.begin() + s.start_pos + 1, toks.begin() + s.start_pos + 1 + k);
    d.o = output_of(r);
    const char* reason = nullptr;
    int64_t accepted = 0;
    int32_t last = 0;
    for (int64_t i = 0; i <= k; ++i) {
      const int32_t prop = i < k ? props[size_t(i)] : -1;
      bool ok = false;
      if (path != Flight::Path::Host) {  // plain greedy: the device's argmax is the target's token
        last = device_ids[at + size_t(i)];
        ok = prop >= 0 && last == prop;
        r.sampler->accept(last);
      } else {
        std::span<float> lg(logits.data() + (at + size_t(i)) * V, V);
        if (r.p.top_logprobs >= 0) raw.assign(lg.begin(), lg.end());
        std::span<const float> q;
        if (prop >= 0 && !r.spec_q.empty()) q = std::span<const float>(r.spec_q).subspan(size_t(i) * V, V);
        last = verify_token(*r.sampler, lg, prop, q, &ok);
      }
      if (ok) ++accepted;
      reason = take_token(r, last, d);
      if (reason || !ok) break;
    }
    d.o.completion_tokens = int64_t(r.out_ids.size());
    ++spec_verifies;
    spec_proposed += k;
    spec_accepted += accepted;
    spec->observe_verify(k, accepted);
    if (!reason) {
      sched->rollback(r.id, k - accepted);
      sched->append_token(r.id, last);
      r.draft_pos = std::min(r.draft_pos, s.start_pos + 1 + accepted);  // the rejected positions' KV is stale
    }
    return reason;
  }

  // Before schedule(): proposals for the requests that decode next (k from the controller).
  // The draft's tokens are placeholders until draft_propose() runs after the schedule.
  void propose() {
    std::vector<Request*> cands;
    for (auto& [id, r] : reqs)
      if (r->p.speculative && !r->matcher && r->rollback_pending == 0 && sched->can_propose(id)) cands.push_back(r.get());
    if (cands.empty()) return;
    // Deterministic order (the map's is not): the draft's batch, hence its numerics, and the
    // proposer's calls do not depend on hashing.
    std::sort(cands.begin(), cands.end(), [](const Request* a, const Request* b) { return a->id < b->id; });
    const int64_t k = spec->choose_k(int64_t(cands.size()));
    spec_k = k;
    if (k == 0) return;
    const auto t0 = std::chrono::steady_clock::now();
    const int32_t V = int32_t(model.config().vocab_size);
    // A probe (speculation off, acceptance to refresh) needs one request, not the batch; each
    // probe takes the next one, so a request with proposals to spare is not always passed over.
    if (spec->probing()) {
      Request* one = cands[size_t(probe_turn++ % cands.size())];
      cands.assign(1, one);
    }
    for (Request* r : cands) {
      // A verify returns up to k + 1 tokens: no proposal past max_tokens.
      const int64_t kk = std::min(k, r->p.max_tokens - int64_t(r->out_ids.size()) - 1);
      if (kk <= 0) continue;
      spec_buf.clear();
      std::span<const int32_t> ctx = sched->tokens(r->id);
      if (proposer) {
        try {
          proposer->propose(r->id, ctx, kk, spec_buf);
        } catch (...) {  // a proposer's failure only costs its proposals
          spec_buf.clear();
        }
        if (int64_t(spec_buf.size()) > kk) spec_buf.resize(size_t(kk));
        // A proposer's bad id must not reach the model: drop the proposal from there on.
        auto bad = std::find_if(spec_buf.begin(), spec_buf.end(), [&](int32_t t) { return t < 0 || t >= V; });
        spec_buf.erase(bad, spec_buf.end());
        r->spec_q.clear();
      } else {
        spec_buf.assign(size_t(kk), ctx.back());  // placeholders
      }
      if (!spec_buf.empty()) sched->propose(r->id, spec_buf), ++step_batch;
    }
    const double secs = since(t0);
    step_proposer_seconds += secs;
    spec_seconds += secs;
    if (proposer) step_rounds += k, step_round_seconds += secs;
  }

  // After schedule(): the draft model proposes for the scheduled verifies, k single-token
  // rounds batched over the requests (its KV at the chunk's positions, in the blocks the
  // schedule gave them), drawing each proposal from its distribution q, kept for verify().
  void draft_propose(const SchedulerOutput& so) {
    std::vector<const ScheduledSeq*> vs;
    int64_t kmax = 0;
    for (const ScheduledSeq& s : so.seqs)
      if (s.num_spec > 0) vs.push_back(&s), kmax = std::max(kmax, s.num_spec);
    if (vs.empty()) return;
    const auto t0 = std::chrono::steady_clock::now();
    const size_t V = size_t(model.config().vocab_size);
    std::vector<SeqStep> steps;
    std::vector<const ScheduledSeq*> in;
    for (const ScheduledSeq* s : vs) {
      Request& r = *reqs.at(s->id);
      r.spec_q.clear();
      if (r.sampler->params().temperature > 0) {
        r.spec_q.resize(size_t(s->num_spec) * V);
        if (!r.draft_rng) r.draft_rng = std::make_unique<Rng>(r.p.sampling.seed ^ 0xD1B54A32D192ED03ull);
      }
    }
    for (int64_t j = 0; j < kmax; ++j) {
      steps.clear();
      in.clear();
      const auto tr = std::chrono::steady_clock::now();
      bool catchup = false;  // a round 0 over more than the usual two tokens
      for (const ScheduledSeq* s : vs) {
        if (s->num_spec <= j) continue;
        std::span<const int32_t> toks = sched->tokens(s->id);
        // Round 0 also catches up over the decodes the draft skipped (draft_pos..start_pos).
        const Request& r = *reqs.at(s->id);
        const int64_t from = j == 0 ? std::clamp<int64_t>(r.draft_pos, 0, s->start_pos) : s->start_pos + j;
        catchup = catchup || from < s->start_pos - 1;
        // (rope_len 0: speculation refuses "dynamic" RoPE, the only user of it.)
        steps.push_back({toks.subspan(size_t(from), size_t(s->start_pos + j + 1 - from)), from, s->block_table,
                         SeqStep::Logits::Last, 0});
        in.push_back(s);
      }
      draft->forward(steps, *draft_kv, spec_logits);
      for (size_t i = 0; i < in.size(); ++i) {
        Request& r = *reqs.at(in[i]->id);
        std::span<float> row(spec_logits.data() + i * V, V);
        int32_t t;
        if (r.spec_q.empty()) {
          t = argmax(row);
        } else {
          // q: the target's sampling transform without its penalties (any q keeps the output
          // exact; the closer to p, the more is accepted).
          SamplingParams qp = r.sampler->params();
          qp.repetition_penalty = 1.0f;
          qp.presence_penalty = qp.frequency_penalty = 0.0f;
          token_distribution(qp, {}, {}, {}, row, spec_idx, spec_dist);
          double u = r.draft_rng->uniform() , acc = 0;
          t = -1;
          float* q = r.spec_q.data() + size_t(j) * V;
          for (size_t v = 0; v < V; ++v) {
            q[v] = float(spec_dist[v]);
            acc += spec_dist[v];
            if (t < 0 && spec_dist[v] > 0 && u < acc) t = int32_t(v);
          }
          if (t < 0) t = argmax(std::span<const float>(q, V));
        }
        sched->set_token(in[i]->id, in[i]->start_pos + 1 + j, t);
      }
      // The controller's cost of a round leaves catch-ups out: they are paid once per stretch
      // the draft skipped, not per proposal (counted in, they turned speculation off for good).
      if (!catchup) step_round_seconds += since(tr), ++step_rounds;
    }
    // Its KV now holds every position but the last proposal's, which the next round 0 catches
    // up (when accepted) in one chunk with the token after it, cheaper than a pass of its own.
    for (const ScheduledSeq* s : vs) reqs.at(s->id)->draft_pos = s->start_pos + s->num_spec;
    const double secs = since(t0);
    step_proposer_seconds += secs;
    spec_seconds += secs;
  }

  static void set_error(RequestOutput& o, const std::string& what) {
    o.finished = true;
    o.finish_reason = "error";
    o.error = what;
  }

  // The forward pass of f threw: its sequences end with the error, uncommitted (their new KV
  // is not trusted and never enters the prefix cache); the commit then only releases the copy
  // sources the step held. Preempted and waiting sequences are untouched.
  void fail_step(Flight& f) {
    for (uint64_t id : f.aborted) sched->finish(id);
    for (const ScheduledSeq& s : f.so.seqs) {
      auto it = reqs.find(s.id);
      if (it != reqs.end()) {
        Produced d;
        d.r = it->second.get();
        d.o = output_of(*d.r);
        set_error(d.o, "the forward pass failed: " + f.error);
        done.emplace_back();
        erase_request(it, &done.back());
        produced.push_back(std::move(d));
      }
      sched->finish(s.id);
    }
    sched->commit(f.so);
    apply_rollbacks(f);
  }

  // A request that failed after collect() (its deferred text): ends it as abort() would,
  // with the error as its output. Its Request moves to `done`, so `d.r` stays valid.
  void fail_produced(Produced& d, const std::string& what) {
    set_error(d.o, what);
    auto it = reqs.find(d.r->id);
    if (it == reqs.end()) return;  // already finished in collect(): only its output changes
    if (flight && d.r->flight == flight->serial) flight->aborted.push_back(d.r->id);  // in the next step
    else sched->finish(d.r->id);
    done.emplace_back();
    erase_request(it, &done.back());
  }

  // The deferred half of collect(): text, then the outputs in step order.
  void finish_outputs(std::vector<RequestOutput>& outs) {
    const auto t0 = std::chrono::steady_clock::now();
    for (Produced& d : produced) {
      Request& r = *d.r;
      try {
        if (d.push)
          for (int32_t id : d.push_ids) push_text(r, id, d.o);
        if (d.flush && r.stream) {  // release held-back and incomplete trailing text
          r.text += r.stream->flush();
          emit_upto(r, r.text.size(), d.o);
        }
      } catch (...) {
        fail_produced(d, current_error());
      }
      outs.push_back(std::move(d.o));
    }
    produced.clear();
    done.clear();
    if (profile) prof_text += since(t0);
  }
};

Engine::Engine(Transformer& model, const Tokenizer* tok, EngineConfig cfg, Transformer* draft)
    : impl_(new Impl(model, tok, cfg, draft)) {
  const ModelConfig& mc = model.config();
  if (draft) {
    const ModelConfig& dc = draft->config();
    if (draft == &model) throw Error("the draft model must be another model than the target");
    if (dc.vocab_size != mc.vocab_size)
      throw Error("the draft model's vocabulary (" + std::to_string(dc.vocab_size) + ") differs from the target's (" +
                  std::to_string(mc.vocab_size) + ")");
    const int64_t ctx = context_limit(mc), dctx = context_limit(dc);
    if (dctx > 0 && (ctx == 0 || dctx < ctx))
      throw Error("the draft model's context (" + std::to_string(dctx) + " tokens) is shorter than the target's");
  }
  if (cfg.block_size <= 0 || cfg.block_size > kMaxBlockSize)
    throw Error("--block-size must be in [1, " + std::to_string(kMaxBlockSize) + "] (got " +
                std::to_string(cfg.block_size) + ")");
  if (cfg.max_num_seqs <= 0) throw Error("--max-num-seqs must be > 0");
  if (cfg.max_num_batched_tokens <= 0) throw Error("--max-num-batched-tokens must be > 0");
  if (cfg.kv_cache_bytes < 0) throw Error("--kv-cache-memory must be >= 0");
  // Every product below is saturating: user input (block size, sequences, bytes) must not wrap.
  // With a draft, a block is one block of each cache.
  const int64_t token_bytes = add_sat(int64_t(KVCache::bytes_per_token(mc, model.kv_dtype())),
                                      draft ? int64_t(KVCache::bytes_per_token(draft->config(), draft->kv_dtype())) : 0);
  const int64_t block_bytes = mul_sat(token_bytes, cfg.block_size);
  const int64_t ctx = context_limit(mc) > 0 ? context_limit(mc) : 4096;
  const int64_t per_seq = ceil_div(ctx, cfg.block_size);
  int64_t num_blocks;
  if (cfg.kv_cache_bytes > 0) {
    num_blocks = cfg.kv_cache_bytes / block_bytes;
    if (num_blocks < 1)
      throw Error("--kv-cache-memory " + std::to_string(cfg.kv_cache_bytes) + " holds no KV block (one is " +
                  std::to_string(block_bytes) + " bytes)");
    if (num_blocks > kMaxKvBlocks)  // block ids are int32
      throw Error("a KV cache of " + std::to_string(cfg.kv_cache_bytes) + " bytes is " + std::to_string(num_blocks) +
                  " blocks of " + std::to_string(block_bytes) + " bytes, more than the " +
                  std::to_string(kMaxKvBlocks) + " a cache can index (lower --kv-cache-memory or -n, or raise "
                  "--block-size)");
  } else if (int64_t budget = default_budget(model, draft); budget >= 0) {
    // GPU: what --gpu-memory-utilization leaves after the weights, capped at what max_num_seqs
    // full-context sequences can use.
    num_blocks = std::min({budget / block_bytes, mul_sat(per_seq, cfg.max_num_seqs), kMaxKvBlocks});
    if (num_blocks < 1)
      throw Error("no GPU memory is left for the KV cache after the weights on " + model.backend().name() +
                  " (raise --gpu-memory-utilization or use a smaller model)");
  } else {
    // Default: what max_num_seqs sequences of the full context need, but no more than 40 % of
    // the memory available now (the mapping is committed page by page as blocks fill, so an
    // unused share costs nothing), and at least one full-context sequence.
    const int64_t share = available_memory() * 2 / 5 / block_bytes;
    num_blocks = std::max(per_seq, std::min(mul_sat(per_seq, cfg.max_num_seqs), share > 0 ? share : per_seq));
    num_blocks = std::min(num_blocks, kMaxKvBlocks);
  }
  if (mul_sat(block_bytes, num_blocks) == kInt64Max)  // KVCache multiplies them in size_t
    throw Error("the KV cache (" + std::to_string(num_blocks) + " blocks of " + std::to_string(block_bytes) +
                " bytes) is larger than any memory; lower --block-size or --kv-cache-memory");
  impl_->kv = std::make_unique<KVCache>(mc, num_blocks, cfg.block_size, model.kv_format(), &model.backend());
  if (draft)
    impl_->draft_kv =
        std::make_unique<KVCache>(draft->config(), num_blocks, cfg.block_size, draft->kv_format(), &draft->backend());
  SchedulerConfig sc;
  sc.num_blocks = num_blocks;
  sc.block_size = cfg.block_size;
  sc.max_num_seqs = cfg.max_num_seqs;
  sc.max_num_batched_tokens = cfg.max_num_batched_tokens;
  // "dynamic" RoPE rotates a prefix by the length of the prompt it came with: a cached prefix of
  // another prompt would be rotated differently, so it is never reused.
  sc.prefix_cache = cfg.prefix_cache && mc.rope.type != RopeType::Dynamic &&
                    !(draft && draft->config().rope.type == RopeType::Dynamic);
  if (cfg.host_kv_cache_bytes < 0) throw Error("--host-kv-cache must be >= 0");
  if (cfg.host_kv_cache_bytes > 0) {
    if (!sc.prefix_cache) throw Error("--host-kv-cache needs the prefix cache (it keeps the prefix cache's blocks)");
    if (cfg.followers) throw Error("--host-kv-cache with tensor or pipeline parallelism is not supported yet");
    // One host slot holds a block of the target's cache and of the draft's (one block table).
    const int64_t per_block =
        int64_t(impl_->kv->bytes_per_block() + (impl_->draft_kv ? impl_->draft_kv->bytes_per_block() : 0));
    sc.num_host_blocks = std::min<int64_t>(cfg.host_kv_cache_bytes / per_block, kMaxKvBlocks);
    if (sc.num_host_blocks < 1)
      throw Error("--host-kv-cache " + std::to_string(cfg.host_kv_cache_bytes) + " bytes holds no block (one is " +
                  std::to_string(per_block) + " bytes)");
    impl_->kv->set_host_tier(sc.num_host_blocks);
    if (impl_->draft_kv) impl_->draft_kv->set_host_tier(sc.num_host_blocks);
  }
  impl_->sched = std::make_unique<Scheduler>(sc);
  if (cfg.kv_event_sink) impl_->sched->set_kv_event_sink(cfg.kv_event_sink);
  if (cfg.num_speculative_tokens < 0 || cfg.num_speculative_tokens > kMaxSpeculativeTokens)
    throw Error("--num-speculative-tokens must be in [0, " + std::to_string(kMaxSpeculativeTokens) + "] (got " +
                std::to_string(cfg.num_speculative_tokens) + ")");
  if (cfg.num_speculative_tokens > 0) {
    if (!draft && !cfg.proposer)
      throw Error("speculative decoding needs a proposer: a draft model or a model-free one (ngram, suffix)");
    if (draft && cfg.proposer)
      throw Error("speculative decoding takes one proposer: a draft model or a model-free one, not both");
    // Verify chunks would rotate by another length than the plain decode steps.
    if (mc.rope.type == RopeType::Dynamic)
      throw Error("speculative decoding does not support \"dynamic\" RoPE scaling (the model's rope_scaling)");
    SpecControllerConfig scc;
    scc.k_max = cfg.num_speculative_tokens;
    scc.adaptive = cfg.speculative_adaptive;
    impl_->spec = std::make_unique<SpecController>(scc);
    impl_->proposer = cfg.proposer;
  }
  if (cfg.followers) {
    if (draft) throw Error("a draft model with tensor parallelism is not supported yet");
    if (cfg.num_speculative_tokens > 0)
      throw Error("speculative decoding with tensor or pipeline parallelism is not supported yet");
    cfg.followers->start(num_blocks, cfg.block_size);
  }
}

Engine::~Engine() {
  Impl& m = *impl_;
  if (m.flight && m.flight->launched) {  // the device may still write the KV cache and the ids
    std::vector<int32_t> ids;
    try {
      m.model.wait_ids(ids);
    } catch (const std::exception&) {
    }
  }
  if (m.cfg.followers) {
    try {
      m.cfg.followers->end();
    } catch (const std::exception& e) {  // a lost rank ends the job anyway (comm/comm.h)
      std::fprintf(stderr, "gale: the tensor-parallel ranks were not told the engine ended: %s\n", e.what());
    }
  }
  if (m.profile && m.prof_steps > 0) {
    const double n = double(m.prof_steps);
    std::fprintf(stderr,
                 "engine: %lld steps, %.1f tokens/step, overlap %s (%lld steps launched ahead); per step: "
                 "schedule %.3f ms, launch %.3f ms, wait for ids %.3f ms, commit+sample+stop %.3f ms, "
                 "text+outputs %.3f ms%s\n",
                 (long long)m.prof_steps, double(m.prof_tokens) / n, m.overlap ? "on" : "off",
                 (long long)m.steps_ahead, 1e3 * m.prof_schedule / n, 1e3 * m.prof_launch / n, 1e3 * m.prof_wait / n,
                 1e3 * m.prof_book / n, 1e3 * m.prof_text / n,
                 m.steps_ahead > 0 ? " (text+outputs of a step launched ahead run while the device computes)" : "");
  }
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
  const int64_t total = add_sat(int64_t(p.prompt.size()), p.max_tokens);  // -n 2^63-1 must not wrap
  if (int64_t ctx = context_limit(mc); ctx > 0 && total > ctx)
    throw Error("the prompt (" + std::to_string(p.prompt.size()) + " tokens) plus max_tokens (" +
                std::to_string(p.max_tokens) + ") exceeds the model's context of " + std::to_string(ctx) + " tokens");
  const int64_t blocks = ceil_div(total, m.cfg.block_size);
  if (blocks > m.sched->pool().num_blocks())
    throw Error("the request needs " + std::to_string(blocks) + " KV blocks but the cache has " +
                std::to_string(m.sched->pool().num_blocks()) + "; raise --kv-cache-memory");
  if (p.top_logprobs > mc.vocab_size) throw Error("top_logprobs exceeds the vocabulary size");
  validate(p.sampling);

  auto r = std::make_unique<Impl::Request>();
  r->id = m.next_id++;
  r->sampler = std::make_unique<Sampler>(p.sampling, p.prompt);
  if (m.tok) r->stream = std::make_unique<StreamDecoder>(*m.tok, p.skip_special_tokens);
  for (const std::string& s : p.stop) r->max_stop = std::max(r->max_stop, s.size());
  if (p.constraint.active() && !p.grammar) p.grammar = m.compile_constraint(p.constraint, p.eos_ids);
  if (p.grammar) {
    if (p.grammar->tokens().vocab != mc.vocab_size)
      throw Error("the request's grammar was compiled for another vocabulary size");
    r->matcher = std::make_unique<GrammarMatcher>(p.grammar);
  }
  r->host_logits = p.top_logprobs >= 0 || ((r->matcher || !r->sampler->plain_greedy()) && !m.model.backend().has_sample_rows());
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
  if (r->host_logits) ++m.n_host_logits;
  m.reqs.emplace(id, std::move(r));
  return id;
}

void Engine::abort(uint64_t id) {
  Impl& m = *impl_;
  auto it = m.reqs.find(id);
  if (it == m.reqs.end()) return;
  const Impl::Request& r = *it->second;
  RequestOutput o = m.output_of(r);
  o.finished = true;
  o.finish_reason = "abort";
  if (m.flight) {
    // The step in flight may use its blocks: the scheduler lets them go after the wait.
    if (r.flight == m.flight->serial) o.cached_prompt_tokens = r.cached_before;
    m.flight->aborted.push_back(id);
  } else {
    m.sched->finish(id);
  }
  m.erase_request(it, nullptr);
  m.pending.push_back(std::move(o));
}

std::vector<RequestOutput> Engine::step() {
  Impl& m = *impl_;
  std::vector<RequestOutput> outs = std::move(m.pending);
  m.pending.clear();
  if (!m.flight) m.start();
  Impl::Flight f = std::move(*m.flight);
  m.flight.reset();
  m.produced.clear();
  m.done.clear();
  m.collect(f);
  // Launch the next step before the slow half of this one, unless some live request needs host
  // logits (its step would run to the end here, delaying this step's outputs). A launch that
  // fails is reported by the next call, as the same step would fail there without overlap.
  if (m.overlap && !m.reqs.empty() && m.n_host_logits == 0) {
    m.start();
    ++m.steps_ahead;
  }
  m.finish_outputs(outs);
  return outs;
}

bool Engine::has_unfinished() const {
  const Impl& m = *impl_;
  return !m.reqs.empty() || !m.pending.empty() || m.flight.has_value();
}

EngineStats Engine::stats() const {
  SchedulerStats s = impl_->sched->stats();
  EngineStats e;
  e.running = s.running;
  e.waiting = s.waiting;
  e.kv_blocks_total = s.blocks_total;
  e.kv_capacity_tokens = impl_->kv->capacity_tokens();
  e.kv_cache_dtype = kv_cache_dtype_name(impl_->kv->dtype());
  e.kv_blocks_free = s.blocks_free;
  e.kv_blocks_cached = s.blocks_cached;
  e.prefix_cache_queried_tokens = s.prefix_queried_tokens;
  e.prefix_cache_hit_tokens = s.prefix_hit_tokens;
  e.prefix_cache_host_hit_tokens = s.prefix_host_hit_tokens;
  e.kv_host_blocks_total = s.host_blocks_total;
  e.kv_host_blocks_cached = s.host_blocks_cached;
  e.kv_host_spilled_blocks = s.host_spilled_blocks;
  e.kv_host_loaded_blocks = s.host_loaded_blocks;
  e.preemptions = s.preemptions;
  e.computed_tokens = s.computed_tokens;
  e.prompt_tokens_total = impl_->prompt_tokens_total;
  e.generation_tokens_total = impl_->generation_tokens_total;
  e.steps_launched_ahead = impl_->steps_ahead;
  e.spec_verifies = impl_->spec_verifies;
  e.spec_proposed_tokens = impl_->spec_proposed;
  e.spec_accepted_tokens = impl_->spec_accepted;
  e.spec_proposer_seconds = impl_->spec_seconds;
  e.spec_k = impl_->spec_k;
  return e;
}

void Engine::rollback(uint64_t id, int64_t n) {
  Impl& m = *impl_;
  auto it = m.reqs.find(id);
  if (it == m.reqs.end()) throw Error("rollback: no live request " + std::to_string(id));
  Impl::Request& r = *it->second;
  const int64_t have = int64_t(r.out_ids.size()) - r.rollback_pending;  // what the caller was returned
  if (n < 0 || n > have)
    throw Error("rollback of " + std::to_string(n) + " tokens: request " + std::to_string(id) + " has " +
                std::to_string(have) + " generated tokens");
  if (r.stream) throw Error("rollback: request " + std::to_string(id) + "'s text was streamed and cannot be taken back");
  if (int64_t(r.p.prompt.size()) + have - n < 2)  // the scheduler rolls back one token more
    throw Error("rollback: every generated token of a one-token prompt cannot be rolled back");
  if (n == 0) return;
  r.rollback_pending += n;
  if (!m.flight) return m.apply_rollback(r, nullptr);
  auto& ids = m.flight->rollbacks;  // the step in flight may hold it: after its commit
  if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

void Engine::clear_prefix_cache() { impl_->sched->clear_prefix_cache(); }

const EngineConfig& Engine::config() const { return impl_->cfg; }

const Transformer& Engine::model() const { return impl_->model; }

const Transformer* Engine::draft() const { return impl_->draft; }

const KVCache& Engine::kv_cache() const { return *impl_->kv; }

const KVCache* Engine::draft_kv_cache() const { return impl_->draft_kv.get(); }

std::span<const float> Engine::draft_logits(uint64_t id) const {
  auto it = impl_->reqs.find(id);
  if (it == impl_->reqs.end()) return {};
  return it->second->draft_logits;
}

}  // namespace gale
