// Incremental detokenization (see StreamDecoder in tokenizer.h).
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace gale {

namespace {

// Length of s without its trailing U+FFFD characters: they may be the lossy rendering of a
// UTF-8 sequence whose remaining bytes are still to come.
size_t without_trailing_replacements(const std::string& s) {
  size_t n = s.size();
  while (n >= 3 && s.compare(n - 3, 3, "\xEF\xBF\xBD") == 0) n -= 3;
  return n;
}

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string text;
  size_t held = 0;  // trailing ids whose text may still change (<0xNN> byte runs)
  try {
    while (held < ids_.size() && tok_.stream_holds(ids_[ids_.size() - 1 - held])) ++held;
    text = tok_.decode(std::span<const int32_t>(ids_.data(), ids_.size() - held), skip_special_);
    if (held) tok_.decode(std::span<const int32_t>(&ids_.back(), 1), skip_special_);  // validates id
  } catch (...) {
    ids_.pop_back();
    throw;
  }
  size_t stable = without_trailing_replacements(text);
  std::string out;
  if (stable > emitted_bytes_) {
    out = text.substr(emitted_bytes_, stable - emitted_bytes_);
    emitted_bytes_ = stable;
  }
  // Everything decoded so far is out: restart the window at the last visible token so the next
  // decode stays short. Its own text is the window's already-emitted prefix.
  bool visible = !(skip_special_ && tok_.is_special(id));
  if (held == 0 && stable == text.size() && emitted_bytes_ == text.size() && visible && ids_.size() > 1) {
    std::string last = tok_.decode(std::span<const int32_t>(&id, 1), skip_special_);
    if (without_trailing_replacements(last) == last.size()) {
      ids_.assign(1, id);
      emitted_bytes_ = last.size();
    }
  }
  return out;
}

std::string StreamDecoder::flush() {
  std::string text = tok_.decode(ids_, skip_special_);
  std::string out = text.size() > emitted_bytes_ ? text.substr(emitted_bytes_) : std::string();
  ids_.clear();
  emitted_bytes_ = 0;
  return out;
}

}  // namespace gale
