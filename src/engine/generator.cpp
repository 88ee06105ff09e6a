#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "runtime/block_pool.h"
#include "tokenizer/tokenizer.h"

namespace gale {

namespace {
double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}
// Length of the longest prefix of s that ends on a UTF-8 character boundary.
size_t utf8_safe_prefix(std::string_view s, size_t n) {
  while (n > 0 && n < s.size() && (uint8_t(s[n]) & 0xC0) == 0x80) --n;
  return n;
}
}  // namespace

Generator::Generator(Transformer& model, const Tokenizer* tok, int64_t block_size, int64_t prefill_chunk)
    : model_(model), tok_(tok), block_size_(block_size), prefill_chunk_(prefill_chunk) {}

GenerateResult Generator::generate(const GenerateRequest& req, const std::function<void(std::string_view)>& on_text) {
  const ModelConfig& cfg = model_.config();
  if (req.prompt.empty()) throw Error("the prompt is empty");
  if (req.max_new_tokens < 0) throw Error("max_new_tokens must be >= 0");
  for (int32_t id : req.prompt)
    if (id < 0 || id >= cfg.vocab_size)
      throw Error("token id " + std::to_string(id) + " is out of range (vocabulary size " +
                  std::to_string(cfg.vocab_size) + ")");
  const int64_t capacity = int64_t(req.prompt.size()) + req.max_new_tokens;
  const int64_t num_blocks = (capacity + block_size_ - 1) / block_size_;
  KVCache kv(cfg, num_blocks, block_size_, model_.kv_dtype());
  BlockPool pool(num_blocks);
  std::vector<int32_t> blocks;
  pool.allocate(num_blocks, blocks);

  GenerateResult res;
  res.prompt_tokens = int64_t(req.prompt.size());
  Sampler sampler(req.sampling, req.prompt);
  std::vector<float> logits;
  auto t_start = std::chrono::steady_clock::now();

  // Chunked prefill: the attention of each chunk reads the earlier chunks through the block table.
  int64_t pos = 0;
  const int64_t P = int64_t(req.prompt.size());
  while (pos < P) {
    int64_t n = std::min(prefill_chunk_, P - pos);
    SeqStep s{std::span<const int32_t>(req.prompt).subspan(size_t(pos), size_t(n)), pos, blocks,
              pos + n == P ? SeqStep::Logits::Last : SeqStep::Logits::None};
    model_.forward({&s, 1}, kv, logits);
    pos += n;
  }
  res.prefill_ms = ms_since(t_start);

  size_t max_stop = 0;
  for (auto& s : req.stop) max_stop = std::max(max_stop, s.size());
  std::unique_ptr<StreamDecoder> stream;
  if (tok_) stream = std::make_unique<StreamDecoder>(*tok_, /*skip_special_tokens=*/true);
  std::string all;     // generated text so far
  size_t emitted = 0;  // bytes of `all` handed to on_text
  auto emit_upto = [&](size_t n) {
    if (n > emitted) {
      if (on_text) on_text(std::string_view(all).substr(emitted, n - emitted));
      emitted = n;
    }
  };

  auto t_decode = std::chrono::steady_clock::now();
  res.finish_reason = "length";
  bool stop_string_hit = false;
  for (int64_t step = 0; step < req.max_new_tokens; ++step) {
    int32_t id = sampler.sample(logits);
    if (step == 0) res.ttft_ms = ms_since(t_start);
    res.ids.push_back(id);
    const bool is_eos = std::find(req.eos_ids.begin(), req.eos_ids.end(), id) != req.eos_ids.end();
    if (is_eos && !req.ignore_eos) {
      res.finish_reason = "stop";
      break;
    }
    if (stream) {
      all += stream->push(id);
      if (max_stop > 0) {
        // Search only where a new match can start; hold back a possible stop prefix.
        size_t from = emitted >= max_stop ? emitted - max_stop + 1 : 0;
        size_t hit = std::string::npos;
        for (auto& s : req.stop) {
          if (s.empty()) continue;
          size_t f = all.find(s, from);
          if (f != std::string::npos && f < hit) hit = f;
        }
        if (hit != std::string::npos) {
          all.resize(hit);
          emit_upto(hit);
          res.finish_reason = "stop";
          stop_string_hit = true;
          break;
        }
        size_t safe = all.size() >= max_stop - 1 ? all.size() - (max_stop - 1) : 0;
        emit_upto(utf8_safe_prefix(all, std::max(safe, emitted)));
      } else {
        emit_upto(all.size());
      }
    }
    if (step + 1 == req.max_new_tokens) break;
    SeqStep s{std::span<const int32_t>(&res.ids.back(), 1), P + step, blocks, SeqStep::Logits::Last};
    model_.forward({&s, 1}, kv, logits);
  }
  if (stream && !stop_string_hit) {  // release held-back and incomplete trailing text
    all += stream->flush();
    emit_upto(all.size());
  }
  res.decode_ms = ms_since(t_decode);
  res.text = all;
  return res;
}

}  // namespace gale
