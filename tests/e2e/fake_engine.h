// A fake StepEngine for the HTTP layer's tests and fuzz target: no model, deterministic
// outputs, the real tokenizer's text.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "serve/engine_loop.h"
#include "tokenizer/tokenizer.h"

namespace gale::test {

// One token per step for each running request: ids 300, 301, ... (text from the real tokenizer).
// A request whose prompt holds token 2 fails after its first token (finish_reason "error", as
// the real engine reports a request whose own work threw); throw_next_step makes step() throw.
// With `script` set, requests write scripted text instead and tokens 1 and 2 mean nothing.
class FakeEngine : public serve::StepEngine {
 public:
  explicit FakeEngine(const Tokenizer* tok) : tok_(tok) {}
  uint64_t add_request(RequestParams p) override {
    std::lock_guard lk(mu_);
    for (int32_t id : p.prompt)
      if (id == 1 && !script) throw Error("the engine refuses token 1");
    uint64_t id = next_++;
    std::string text = script ? script(p.prompt) : std::string();
    last_skip_special = p.skip_special_tokens ? 1 : 0;
    reqs_[id] = {std::move(p), 0, false, std::move(text)};
    return id;
  }
  void abort(uint64_t id) override {
    std::lock_guard lk(mu_);
    if (reqs_.count(id)) reqs_[id].aborted = true;
    ++aborts;
  }
  std::vector<RequestOutput> step() override {
    if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    if (throw_next_step.exchange(false)) throw Error("injected step failure");
    std::lock_guard lk(mu_);
    std::vector<RequestOutput> outs;
    for (auto it = reqs_.begin(); it != reqs_.end();) {
      auto& r = it->second;
      RequestOutput o;
      o.id = it->first;
      o.prompt_tokens = int64_t(r.p.prompt.size());
      const bool fails = !script && std::find(r.p.prompt.begin(), r.p.prompt.end(), 2) != r.p.prompt.end();
      if (r.aborted) {
        o.finished = true;
        o.finish_reason = "abort";
      } else if (fails && r.done == 1) {
        o.finished = true;
        o.finish_reason = "error";
        o.error = "injected request failure";
      } else if (script) {  // the scripted text, piece_bytes a step, then "stop"
        const size_t at = size_t(r.done) * piece_bytes;
        o.new_ids = {300};
        o.new_text = r.text.substr(std::min(at, r.text.size()), piece_bytes);
        ++r.done;
        if (at + piece_bytes >= r.text.size()) {
          o.finished = true;
          o.finish_reason = "stop";
        } else if (r.done >= r.p.max_tokens) {
          o.finished = true;
          o.finish_reason = "length";
        }
      } else {
        int32_t t = 300 + int32_t(r.done);
        o.new_ids = {t};
        int32_t a[1] = {t};
        o.new_text = tok_->decode(a);
        if (r.p.top_logprobs >= 0) {
          TokenLogprob lp{t, -0.5f, {}};
          for (int k = 0; k < r.p.top_logprobs; ++k) lp.top.push_back({t + k, -0.5f - float(k)});
          o.logprobs.push_back(lp);
        }
        ++r.done;
        if (r.done >= r.p.max_tokens) {
          o.finished = true;
          o.finish_reason = "length";
        }
      }
      o.completion_tokens = r.done;
      outs.push_back(std::move(o));
      if (outs.back().finished) it = reqs_.erase(it);
      else ++it;
    }
    return outs;
  }
  bool has_unfinished() const override {
    std::lock_guard lk(mu_);
    return !reqs_.empty();
  }
  EngineStats stats() const override {
    std::lock_guard lk(mu_);
    EngineStats s;
    s.running = int64_t(reqs_.size());
    s.kv_blocks_total = 100;
    s.kv_blocks_free = 100 - s.running;
    s.kv_capacity_tokens = 1600;
    s.kv_cache_dtype = "fp8";
    return s;
  }
  std::atomic<int> step_ms{0};
  std::atomic<int> aborts{0};
  std::atomic<bool> throw_next_step{false};
  // Scripted output (set before the server starts): each request writes script(its prompt) in
  // pieces of piece_bytes, one per step, and stops.
  std::function<std::string(const std::vector<int32_t>& prompt)> script;
  size_t piece_bytes = 3;
  std::atomic<int> last_skip_special{-1};  // the last request's skip_special_tokens

 private:
  struct R {
    RequestParams p;
    int64_t done;
    bool aborted;
    std::string text;  // scripted output
  };
  const Tokenizer* tok_;
  mutable std::mutex mu_;
  std::map<uint64_t, R> reqs_;
  uint64_t next_ = 1;
};

}  // namespace gale::test
