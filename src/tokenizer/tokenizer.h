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

  // add_special_tokens: apply the post-processor (BOS/EOS insertion) as HF's encode() does.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  // Throws gale::Error for ids outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  virtual size_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
};

// Streaming detokenization: push ids one at a time; each call returns only text that is
// complete UTF-8 and final, and the concatenation of all returns plus flush() equals
// decode(all ids).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t emitted_bytes_ = 0;
};

}  // namespace gale
