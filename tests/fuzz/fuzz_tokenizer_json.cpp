// libFuzzer: arbitrary bytes as tokenizer.json. Loading must either succeed or throw gale::Error;
// a tokenizer that loads must then encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<gale::Tokenizer> tok;
  try {
    tok = gale::Tokenizer::from_json(text);
  } catch (const gale::Error&) {
    return 0;
  }
  try {
    std::vector<int32_t> ids = tok->encode("Hello  world! 123 <s> \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\n\tx", true);
    tok->decode(ids, false);
    tok->decode(ids, true);
    std::vector<int32_t> all;
    for (size_t i = 0; i < tok->vocab_size() && i < 512; ++i) all.push_back(int32_t(i));
    tok->decode(all, false);
    // Ids past the vocabulary (a padded embedding) decode to nothing, streamed or not.
    std::vector<int32_t> past = {int32_t(tok->vocab_size()), 0, int32_t(tok->vocab_size()) + 1};
    GALE_ASSERT(tok->decode(std::span<const int32_t>(past.data(), 1), false).empty());
    gale::StreamDecoder sd(*tok, true);
    for (int32_t id : past) sd.push(id);
    sd.flush();
  } catch (const gale::Error&) {
    // e.g. a regex that hits PCRE2's match limit, or an unk token missing from the vocab
  }
  return 0;
}
