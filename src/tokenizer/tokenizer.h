// Hugging Face tokenizer.json: text <-> token ids, exactly as the `tokenizers` library does.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gale {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads <dir>/tokenizer.json (and tokenizer_config.json when present).
  // Throws gale::Error naming the file and the problem.
  static std::unique_ptr<Tokenizer> load(const std::string& model_dir);
  // Same, from the text of tokenizer.json (and of tokenizer_config.json when not empty).
  static std::unique_ptr<Tokenizer> from_json(std::string_view tokenizer_json, std::string_view config_json = {});

  // add_special_tokens: apply the post-processor (BOS/EOS insertion) as HF's encode() does.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  // Ids the vocabulary does not hold (>= vocab_size(), or holes) decode to no text, as HF's
  // decode does: a model's embedding is often padded past the tokenizer. Throws gale::Error
  // for negative ids.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  virtual size_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // True when the decoded text of `id` may still change depending on the ids that follow
  // (a <0xNN> byte token under a ByteFallback decoder); StreamDecoder holds such text back.
  virtual bool stream_holds(int32_t id) const { (void)id; return false; }
  // The bytes token `id` adds to the output, where decode() of one id would lose them (a byte-level
  // token holding part of a UTF-8 character; SentencePiece's <0xNN> byte tokens): the grammar
  // engine's view of the vocabulary. Empty for ids without text.
  virtual std::string token_bytes(int32_t id) const { return decode(std::span<const int32_t>(&id, 1)); }
};

// Streaming detokenization: push ids one at a time; each call returns only text that is
// complete UTF-8 and final, and the concatenation of all returns plus flush() equals
// decode(all ids).
//
// It decodes a short window of ids rather than the whole history: the window starts at the last
// visible token whose text was fully emitted, so position-dependent decoders (Metaspace and Strip
// treat the first token specially) see the same first token in both decodes it compares.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;   // the window
  size_t emitted_bytes_ = 0;   // bytes of decode(window) already returned
};

}  // namespace gale
