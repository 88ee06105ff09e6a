// libFuzzer: arbitrary bytes as a /v1/completions and a /v1/chat/completions body, through the
// server's JSON parse (depth-bounded), parser and validator, to the engine requests. Any
// exception but ApiError (the 4xx the server answers) is a bug, and so is a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "serve/openai_api.h"
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
    return t;
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Target& t = target();
  nlohmann::ordered_json body;
  try {
    body = gale::serve::parse_json_body(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const gale::serve::ApiError&) {
    return 0;
  }
  for (bool chat : {false, true}) {
    try {
      gale::serve::ApiRequest r = chat ? gale::serve::parse_chat_request(body, t.info, t.tok.get(), t.tmpl.get())
                                       : gale::serve::parse_completion_request(body, t.info, t.tok.get());
      for (const gale::RequestParams& p : r.engine_requests())
        if (p.max_tokens < 1 || int64_t(p.prompt.size()) + p.max_tokens > t.info.max_model_len) __builtin_trap();
    } catch (const gale::serve::ApiError&) {
    }
  }
  return 0;
}
