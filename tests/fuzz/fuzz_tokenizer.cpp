// libFuzzer: arbitrary bytes through encode / decode / streaming decode of fixture tokenizers.
// The first byte picks the tokenizer; the rest is the text, and is reused as a list of ids.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

const std::vector<std::unique_ptr<gale::Tokenizer>>& tokenizers() {
  static const auto toks = [] {
    std::string here = __FILE__;
    std::string root = here.substr(0, here.rfind('/')) + "/../fixtures/tokenizers/";
    std::vector<std::unique_ptr<gale::Tokenizer>> v;
    for (const char* name : {"llama3_bpe", "llama2_spm", "mistral_spm", "added_tokens", "split_variants",
                             "bert_style_bpe", "spm_unk_fused", "qwen2_bpe"})
      v.push_back(gale::Tokenizer::load(root + name));
    return v;
  }();
  return toks;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& toks = tokenizers();
  const gale::Tokenizer& tok = *toks[data[0] % toks.size()];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  for (bool special : {true, false}) {
    std::vector<int32_t> ids = tok.encode(text, special);
    for (int32_t id : ids) GALE_ASSERT(id >= 0 && size_t(id) < tok.vocab_size());
    for (bool skip : {false, true}) {
      std::string full = tok.decode(ids, skip);
      gale::StreamDecoder sd(tok, skip);
      std::string streamed;
      for (int32_t id : ids) streamed += sd.push(id);
      streamed += sd.flush();
      GALE_ASSERT(streamed == full);
    }
  }
  // The same bytes as arbitrary ids (2 bytes each), in range: decode must never crash, and the
  // streamed pieces must add up to the full decode.
  std::vector<int32_t> ids;
  for (size_t i = 1; i + 1 < size; i += 2) ids.push_back(int32_t((data[i] | (data[i + 1] << 8)) % tok.vocab_size()));
  std::string full = tok.decode(ids, false);
  gale::StreamDecoder sd(tok, false);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  GALE_ASSERT(streamed == full);
  return 0;
}
