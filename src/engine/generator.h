// One request end to end, blocking: a thin wrapper that runs a single request through the
// Engine (engine/engine.h) with a KV cache sized for it. Convenient for tests and tools; the
// work (chunked prefill, decode, sampling, stop strings, streamed text) is the Engine's.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/transformer.h"
#include "runtime/sampler.h"

namespace gale {

class Tokenizer;

struct GenerateRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  bool ignore_eos = false;
  std::vector<int32_t> eos_ids;
  std::vector<std::string> stop;  // stop strings: generation ends before them, never emitted
};

struct GenerateResult {
  std::vector<int32_t> ids;  // generated ids (a stop string's tokens included)
  std::string text;          // generated text, cut before a stop string
  std::string finish_reason; // "stop" (eos or stop string) or "length"
  int64_t prompt_tokens = 0;
  double prefill_ms = 0, decode_ms = 0, ttft_ms = 0;
};

class Generator {
 public:
  // tok may be null: ids only, no text.
  Generator(Transformer& model, const Tokenizer* tok, int64_t block_size = 16, int64_t prefill_chunk = 512);
  // on_text receives each newly final piece of text (nothing when there is no tokenizer).
  GenerateResult generate(const GenerateRequest& req, const std::function<void(std::string_view)>& on_text = {});

 private:
  Transformer& model_;
  const Tokenizer* tok_;
  int64_t block_size_, prefill_chunk_;
};

}  // namespace gale
