// libFuzzer: arbitrary bytes as one `gale batch` input line, through the line parser and the
// batch request validator (the server's, plus batch's rules), and as an output line through the
// resume check. Any exception but ApiError is a bug, and so is a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "serve/openai_batch.h"
#include "fuzz_target.h"

namespace {

using gale::fuzz::Target;

const Target& target() {
  static const Target t = gale::fuzz::make_target(/*check_model_name=*/false);
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
    gale::serve::BatchRequest r = gale::serve::batch_request(line, t.info, t.tok.get(), t.tmpl.get());
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
