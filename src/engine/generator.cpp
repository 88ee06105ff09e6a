#include "engine/generator.h"

#include <chrono>

#include "core/error.h"
#include "engine/engine.h"
#include "model/kv_cache.h"

namespace gale {

Generator::Generator(Transformer& model, const Tokenizer* tok, int64_t block_size, int64_t prefill_chunk)
    : model_(model), tok_(tok), block_size_(block_size), prefill_chunk_(prefill_chunk) {}

GenerateResult Generator::generate(const GenerateRequest& req, const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  EngineConfig ec;
  ec.block_size = block_size_;
  ec.max_num_seqs = 1;
  ec.max_num_batched_tokens = prefill_chunk_;
  ec.prefix_cache = false;
  const int64_t capacity = int64_t(req.prompt.size()) + std::max<int64_t>(req.max_new_tokens, 0);
  ec.kv_cache_bytes = std::max<int64_t>(1, (capacity + block_size_ - 1) / block_size_) * block_size_ *
                      int64_t(KVCache::bytes_per_token(model_.config(), model_.kv_dtype()));
  Engine engine(model_, tok_, ec);
  RequestParams p;
  p.prompt = req.prompt;
  p.max_tokens = req.max_new_tokens;
  p.sampling = req.sampling;
  p.ignore_eos = req.ignore_eos;
  p.eos_ids = req.eos_ids;
  p.stop = req.stop;
  const auto t0 = clock::now();
  engine.add_request(std::move(p));
  GenerateResult res;
  res.prompt_tokens = int64_t(req.prompt.size());
  auto t_first = t0;
  while (engine.has_unfinished()) {
    for (RequestOutput& o : engine.step()) {
      if (res.ids.empty() && !o.new_ids.empty()) {
        t_first = clock::now();
        res.ttft_ms = res.prefill_ms = ms(t0, t_first);
      }
      res.ids.insert(res.ids.end(), o.new_ids.begin(), o.new_ids.end());
      res.text += o.new_text;
      if (on_text && !o.new_text.empty()) on_text(o.new_text);
      if (o.finished && o.finish_reason == "error") throw Error(o.error);  // its only request failed
      if (o.finished) res.finish_reason = o.finish_reason;
    }
  }
  if (!res.ids.empty()) res.decode_ms = ms(t_first, clock::now());
  return res;
}

}  // namespace gale
