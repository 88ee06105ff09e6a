// The engine's one-step-deep pipeline (EngineConfig::overlap): launching step N+1 before
// finishing step N's text and outputs changes nothing a caller sees. A mixed workload (greedy,
// seeded sampling with penalties, stop strings, eos, max_tokens, logprobs, a shared prefix,
// max_tokens 0, an abort while a step is in flight) returns the same outputs call for call
// with overlap on and off, on the CPU backend (sampling on the host) and on a CPU backend that
// samples in sample_rows as the GPU does (so sampled steps are launched ahead too).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>

#include "engine/engine.h"
#include "loader/model_config.h"
#include "model/arch/arch.h"
#include "loader/safetensors.h"
#include "model/cpu_backend.h"
#include "model/model_loader.h"
#include "host_sampling_backend.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

using test::HostSamplingBackend;

// GALE_OVERLAP=0 in the environment turns overlap off for every engine: nothing to compare.
bool overlap_disabled() {
  const char* v = std::getenv("GALE_OVERLAP");
  return v && std::string(v) == "0";
}

std::unique_ptr<Transformer> load_with(const std::string& path, std::unique_ptr<Backend> be) {
  ModelConfig cfg = load_model_config(path);
  auto st = std::make_shared<SafeTensors>(SafeTensors::open_dir(path));
  return std::make_unique<Transformer>(cfg, bind_weights(st, cfg), ActDType::F32, std::move(be));
}

// Everything a caller can see of one output, floats bit for bit.
std::string show(const RequestOutput& o) {
  std::string s = "id " + std::to_string(o.id) + " ids";
  for (int32_t t : o.new_ids) s += " " + std::to_string(t);
  s += " text '" + o.new_text + "' finished " + std::to_string(o.finished) + " " + o.finish_reason + " usage " +
       std::to_string(o.prompt_tokens) + "/" + std::to_string(o.completion_tokens) + "/" +
       std::to_string(o.cached_prompt_tokens);
  char b[64];
  for (const TokenLogprob& lp : o.logprobs) {
    std::snprintf(b, sizeof b, " lp %d %a", lp.id, double(lp.logprob));
    s += b;
    for (auto& [id, v] : lp.top) {
      std::snprintf(b, sizeof b, " %d:%a", id, double(v));
      s += b;
    }
  }
  return s;
}

struct Outputs {
  std::vector<std::vector<std::string>> calls;  // each step()'s outputs, in order
  std::map<uint64_t, std::string> per_request;  // each request's outputs concatenated
  EngineStats stats;
};

struct Plan {
  std::vector<RequestParams> reqs;  // added before the first step
  int abort_before_call = -1;       // abort reqs[abort_index] right before this step() call
  size_t abort_index = 0;
  int add_before_call = -1;         // add `late` right before this step() call
  std::vector<RequestParams> late;
};

Outputs run(Transformer& m, const Tokenizer* tok, const Plan& plan, bool overlap, EngineConfig ec = {}) {
  ec.overlap = overlap;
  if (ec.kv_cache_bytes == 0) ec.kv_cache_bytes = 16 << 20;
  Engine e(m, tok, ec);
  std::vector<uint64_t> ids;
  for (const RequestParams& p : plan.reqs) ids.push_back(e.add_request(p));
  Outputs r;
  for (int call = 0; e.has_unfinished() || call <= plan.add_before_call; ++call) {
    if (call == plan.abort_before_call) e.abort(ids.at(plan.abort_index));
    if (call == plan.add_before_call)
      for (const RequestParams& p : plan.late) e.add_request(p);
    std::vector<std::string> shown;
    for (const RequestOutput& o : e.step()) {
      shown.push_back(show(o));
      r.per_request[o.id] += shown.back() + "\n";
    }
    r.calls.push_back(shown);
    EXPECT_LT(call, 10000);
    if (call >= 10000) break;
  }
  r.stats = e.stats();
  EXPECT_EQ(r.stats.running + r.stats.waiting, 0);
  e.clear_prefix_cache();
  EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total) << "blocks leaked";
  return r;
}

// The greedy continuation of a prompt (overlap off), to pick stop strings and eos ids that occur.
std::vector<int32_t> greedy_ids(Transformer& m, const std::vector<int32_t>& prompt, int64_t n) {
  RequestParams p;
  p.prompt = prompt;
  p.max_tokens = n;
  p.ignore_eos = true;
  EngineConfig ec;
  ec.overlap = false;
  ec.kv_cache_bytes = 16 << 20;
  Engine e(m, nullptr, ec);
  e.add_request(p);
  std::vector<int32_t> out;
  while (e.has_unfinished())
    for (const RequestOutput& o : e.step()) out.insert(out.end(), o.new_ids.begin(), o.new_ids.end());
  return out;
}

Plan mixed_workload(Transformer& m, const Tokenizer& tok) {
  const std::vector<int32_t> code = tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n");
  const std::vector<int32_t> imports = tok.encode("import os\nimport sys\n\n");
  const std::vector<int32_t> cls = tok.encode("class Stack:\n    def __init__(self):\n");
  const std::vector<int32_t> cont = greedy_ids(m, cls, 24);
  const std::string text = tok.decode(cont);
  EXPECT_GE(text.size(), 8u);
  Plan plan;
  auto add = [&](const std::vector<int32_t>& prompt, int64_t max_tokens) -> RequestParams& {
    RequestParams p;
    p.prompt = prompt;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    plan.reqs.push_back(p);
    return plan.reqs.back();
  };
  add(code, 40);                                     // 0: greedy, the longest: runs alone at the end
  add(cls, 24).stop = {text.substr(text.size() / 2, 3), "never-there"};  // 1: greedy, stops mid-way
  {
    RequestParams& p = add(imports, 14);             // 2: seeded sampling with every penalty
    p.sampling.temperature = 0.9f;
    p.sampling.top_k = 40;
    p.sampling.repetition_penalty = 1.3f;
    p.sampling.presence_penalty = 0.5f;
    p.sampling.frequency_penalty = 0.4f;
    p.sampling.seed = 7;
  }
  {
    RequestParams& p = add(code, 10);                // 3: top-p / min-p, a stop string, shared prefix
    p.sampling.temperature = 1.1f;
    p.sampling.top_p = 0.9f;
    p.sampling.min_p = 0.02f;
    p.sampling.seed = 11;
    p.stop = {"\n\n", "e"};
  }
  add(imports, 1);                                   // 4: max_tokens 1
  {
    RequestParams& p = add(cls, 20);                 // 5: ends on an eos id it will produce
    p.ignore_eos = false;
    p.eos_ids = {cont.at(6)};
  }
  add(code, 30);                                     // 6: aborted while a step is in flight
  add(imports, 6).top_logprobs = 3;                  // 7: logprobs (host logits while it lives)
  add(code, 0);                                      // 8: nothing to generate
  add(tok.encode("x = 1"), 12).sampling.repetition_penalty = 1.2f;  // 9: greedy with a penalty
  plan.abort_before_call = 19;
  plan.abort_index = 6;
  return plan;
}

TEST(EngineOverlap, SameOutputsCallForCallWithAndWithoutOverlap) {
  if (overlap_disabled()) GTEST_SKIP() << "GALE_OVERLAP=0";
  const std::string path = bundled("draft");
  auto tok = Tokenizer::load(path);
  std::unique_ptr<Transformer> cpu = load_with(path, std::make_unique<CpuBackend>(false));
  std::unique_ptr<Transformer> dev = load_with(path, std::make_unique<HostSamplingBackend>());
  const Plan plan = mixed_workload(*cpu, *tok);
  for (bool prefix : {true, false}) {
    SCOPED_TRACE(prefix ? "prefix cache" : "no prefix cache");
    EngineConfig ec;
    ec.prefix_cache = prefix;
    ec.max_num_seqs = 16;
    ec.max_num_batched_tokens = 64;  // the prompts are chunked
    Outputs cpu_off = run(*cpu, tok.get(), plan, false, ec), cpu_on = run(*cpu, tok.get(), plan, true, ec);
    Outputs dev_off = run(*dev, tok.get(), plan, false, ec), dev_on = run(*dev, tok.get(), plan, true, ec);
    EXPECT_EQ(cpu_on.calls, cpu_off.calls);
    EXPECT_EQ(dev_on.calls, dev_off.calls);
    // Sampling in sample_rows is Sampler::sample with the same uniforms: the same tokens.
    EXPECT_EQ(dev_off.calls, cpu_off.calls);
    EXPECT_EQ(cpu_off.stats.steps_launched_ahead, 0);
    EXPECT_EQ(dev_off.stats.steps_launched_ahead, 0);
    // Launched ahead: on the CPU backend once only greedy requests are left; with sampling in
    // sample_rows once the logprobs request is done.
    EXPECT_GT(cpu_on.stats.steps_launched_ahead, 5);
    EXPECT_GT(dev_on.stats.steps_launched_ahead, cpu_on.stats.steps_launched_ahead);
    // The workload did what it is meant to: every kind of ending.
    std::string all;
    for (auto& c : cpu_off.calls)
      for (auto& s : c) all += s + "\n";
    for (const char* reason : {" stop ", " length ", " abort "})
      EXPECT_NE(all.find(std::string("finished 1") + reason), std::string::npos) << reason;
    EXPECT_NE(all.find(" lp "), std::string::npos);
    if (prefix) {
      EXPECT_GT(cpu_off.stats.prefix_cache_hit_tokens, 0);
    }
    EXPECT_EQ(cpu_on.stats.generation_tokens_total, cpu_off.stats.generation_tokens_total);
  }
}

// Preemption under a tiny KV budget, with overlap: the same calls as without.
TEST(EngineOverlap, PreemptionGivesTheSameOutputs) {
  if (overlap_disabled()) GTEST_SKIP() << "GALE_OVERLAP=0";
  const std::string path = bundled("draft");
  auto tok = Tokenizer::load(path);
  std::unique_ptr<Transformer> dev = load_with(path, std::make_unique<HostSamplingBackend>());
  Plan plan = mixed_workload(*dev, *tok);
  EngineConfig ec;
  ec.block_size = 4;
  ec.max_num_seqs = 8;
  ec.max_num_batched_tokens = 32;
  int64_t longest = 0;
  for (const RequestParams& p : plan.reqs) longest = std::max<int64_t>(longest, int64_t(p.prompt.size()) + p.max_tokens);
  // Room for the longest request and a little more: running them all at once must preempt.
  ec.kv_cache_bytes = ((longest + ec.block_size - 1) / ec.block_size + 3) * ec.block_size *
                      int64_t(KVCache::bytes_per_token(dev->config(), dev->kv_dtype()));
  Outputs off = run(*dev, tok.get(), plan, false, ec), on = run(*dev, tok.get(), plan, true, ec);
  EXPECT_GT(off.stats.preemptions, 0);
  EXPECT_EQ(on.stats.preemptions, off.stats.preemptions);
  EXPECT_EQ(on.calls, off.calls);
}

// Requests added while a step is in flight join one step later than without overlap: each
// request's outputs are still the same.
TEST(EngineOverlap, RequestsAddedInFlightGetTheSameOutputs) {
  if (overlap_disabled()) GTEST_SKIP() << "GALE_OVERLAP=0";
  const std::string path = bundled("draft");
  auto tok = Tokenizer::load(path);
  std::unique_ptr<Transformer> dev = load_with(path, std::make_unique<HostSamplingBackend>());
  Plan plan = mixed_workload(*dev, *tok);
  plan.abort_before_call = -1;
  plan.late = {plan.reqs[0], plan.reqs[1], plan.reqs[2], plan.reqs[3]};
  plan.late[0].max_tokens = 5;
  plan.add_before_call = 12;
  Outputs off = run(*dev, tok.get(), plan, false), on = run(*dev, tok.get(), plan, true);
  EXPECT_EQ(on.per_request, off.per_request);
  EXPECT_EQ(on.per_request.size(), plan.reqs.size() + plan.late.size());
}

TEST(EngineOverlap, InFlightStepsAreWaitedForAndAborted) {
  if (overlap_disabled()) GTEST_SKIP() << "GALE_OVERLAP=0";
  const std::string path = bundled("draft");
  std::unique_ptr<Transformer> m = load_with(path, std::make_unique<CpuBackend>(false));
  RequestParams p;
  p.prompt = {5, 6, 7, 8, 9};
  p.max_tokens = 3;
  p.ignore_eos = true;
  EngineConfig ec;
  ec.kv_cache_bytes = 8 << 20;
  {
    Engine e(*m, nullptr, ec);
    e.add_request(p);
    int calls = 0;
    while (e.has_unfinished()) {
      std::vector<RequestOutput> outs = e.step();
      ++calls;
      ASSERT_EQ(outs.size(), 1u);  // one token a call, as without overlap
      EXPECT_EQ(outs[0].finished, calls == 3);
      // The next step is in flight: still unfinished.
      if (calls < 3) {
        EXPECT_TRUE(e.has_unfinished());
      }
    }
    EXPECT_EQ(calls, 3);
    EXPECT_EQ(e.stats().steps_launched_ahead, 2);
  }
  {
    // Aborting everything while a step is in flight: the abort comes first, the in-flight
    // token is dropped, the blocks come back.
    Engine e(*m, nullptr, ec);
    p.max_tokens = 10;
    uint64_t a = e.add_request(p), b = e.add_request(p);
    e.step();
    e.abort(a);
    e.abort(b);
    e.abort(b);  // twice: ignored
    std::vector<RequestOutput> outs = e.step();
    ASSERT_EQ(outs.size(), 2u);
    for (const RequestOutput& o : outs) {
      EXPECT_EQ(o.finish_reason, "abort");
      EXPECT_EQ(o.completion_tokens, 1);
      EXPECT_TRUE(o.new_ids.empty());
    }
    EXPECT_FALSE(e.has_unfinished());
    e.clear_prefix_cache();
    EXPECT_EQ(e.stats().kv_blocks_free, e.stats().kv_blocks_total);
  }
  {
    // Destroyed with a step in flight.
    Engine e(*m, nullptr, ec);
    e.add_request(p);
    e.step();
    EXPECT_TRUE(e.has_unfinished());
  }
}

}  // namespace
