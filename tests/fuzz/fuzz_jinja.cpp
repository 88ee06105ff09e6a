// libFuzzer: arbitrary text as a Jinja2 chat template, parsed and rendered over a small chat.
// Any gale::Error is fine; crashes, hangs, sanitizer reports and unbounded memory are not.
// Limits are tighter than the defaults so each input finishes quickly.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/jinja_interp.h"

namespace {

const std::unordered_map<std::string, gale::jinja::Value>& vars() {
  static const auto v = [] {
    auto msgs = nlohmann::ordered_json::parse(R"([
      {"role": "system", "content": "sys"},
      {"role": "user", "content": "héllo <think>x</think>"},
      {"role": "assistant", "content": "a", "reasoning_content": "r",
       "tool_calls": [{"id": "abcdefghi", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
      {"role": "tool", "content": "{\"ok\": true}"}])");
    auto tools = nlohmann::ordered_json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])");
    std::unordered_map<std::string, gale::jinja::Value> m;
    m["messages"] = gale::jinja::Value::from_json(msgs);
    m["tools"] = gale::jinja::Value::from_json(tools);
    m["add_generation_prompt"] = gale::jinja::Value::boolean(true);
    m["bos_token"] = gale::jinja::Value::string("<s>");
    m["eos_token"] = gale::jinja::Value::string("</s>");
    return m;
  }();
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gale::jinja::Limits lim;
  lim.max_steps = 200000;
  lim.max_output_bytes = size_t(1) << 20;
  lim.max_items = size_t(1) << 16;
  std::string src(reinterpret_cast<const char*>(data), size);
  try {
    gale::jinja::Template t(src, lim);
    std::string out = t.render(vars(), 0);
    GALE_ASSERT(out.size() <= lim.max_output_bytes);
  } catch (const gale::Error&) {
  }
  return 0;
}
