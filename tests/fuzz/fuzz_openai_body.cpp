// libFuzzer: arbitrary bytes as a /v1/completions and a /v1/chat/completions body, through the
// server's JSON parse (depth-bounded), parser and validator, to the engine requests. Any
// exception but ApiError (the 4xx the server answers) is a bug, and so is a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "serve/openai_api.h"
#include "fuzz_target.h"

namespace {

using gale::fuzz::Target;

const Target& target() {
  static const Target t = gale::fuzz::make_target(/*check_model_name=*/true);
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
