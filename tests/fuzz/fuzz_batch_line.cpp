// libFuzzer: arbitrary bytes as one `gale batch` input line, through the line parser and the
// batch request validator (the server's, plus batch's rules), and as an output line through the
// resume check. Any exception but ApiError is a bug, and so is a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "serve/openai_batch.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Target {
  std::unique_ptr<gale::Tokenizer> tok;
  std::unique_ptr<gale::ChatTemplate> tmpl;
  gale::serve::ModelInfo info;
};

const Target& target() {
  static const Target t = [] {
    Target t;
    t.tok = gale::Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default");
    t.tmpl = std::make_unique<gale::ChatTemplate>(gale::ChatTemplate::from_string(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"));
    t.info.name = "fuzz";
    t.info.max_model_len = 256;
    t.info.vocab_size = int64_t(t.tok->vocab_size());
    t.info.check_model_name = false;
    return t;
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Target& t = target();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)gale::serve::recorded_custom_id(text);
  gale::serve::BatchLine line = gale::serve::parse_batch_line(text);
  if (!line.error.empty()) return 0;
  try {
    gale::serve::BatchRequest r = gale::serve::batch_request(line, t.info, t.tok.get(), t.tmpl.get(), {});
    if (r.params.max_tokens < 1 || int64_t(r.params.prompt.size()) + r.params.max_tokens > t.info.max_model_len)
      __builtin_trap();
    gale::serve::ChoiceState c;
    c.text = "x";
    c.finish_reason = "length";
    gale::RequestOutput fin;
    fin.finish_reason = size % 2 ? "error" : "length";
    std::string out = gale::serve::json_text(
        gale::serve::batch_finished_line(line.custom_id, r.api, t.info, t.tok.get(), c, fin));
    if (gale::serve::recorded_custom_id(out) != line.custom_id) __builtin_trap();  // resume must trust what we write
  } catch (const gale::serve::ApiError&) {
  }
  return 0;
}
