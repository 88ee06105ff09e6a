// The real HTTP server over the fake engine, for client tests of tool calls and reasoning
// (tools_client_test.mjs): the model folder's chat template is the real Qwen3 one
// (tests/fixtures/chat_templates/qwen3: hermes tool calls, <think> reasoning, both detected from
// it as `gale serve` detects them), and the "model" writes canned text picked by a keyword in the
// prompt, 2 bytes per step. Prints the port on stdout's first line; SIGTERM drains and exits.
//   fake_serve [PORT]   (default 0: any free port)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "fake_engine.h"
#include "serve/server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

int main(int argc, char** argv) {
  auto tok = Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default");
  ChatTemplate tmpl = ChatTemplate::load(std::string(GALE_SOURCE_DIR) + "/tests/fixtures/chat_templates/qwen3");
  static const std::vector<std::pair<std::string, std::string>> canned = {
      {"KW_WEATHER", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>"},
      {"KW_TWO", "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n"
                 "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Rome\"}}\n</tool_call>"},
      {"KW_THINK_CALL", "<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", "
                        "\"arguments\": {\"city\": \"Z\\u00fcrich\"}}\n</tool_call>"},
      {"KW_THINK", "<think>\nTwo plus two is four.\n</think>\n\nThe answer is 4."},
      {"KW_BROKEN", "I would call <tool_call>{\"name\": oops}</tool_call> but no."},
  };
  test::FakeEngine engine(tok.get());
  engine.piece_bytes = 2;
  engine.script = [&](const std::vector<int32_t>& prompt) {
    std::string p = tok->decode(prompt);
    // The last user turn decides (the system prompt lists the tools, the history earlier turns).
    size_t at = p.rfind("<|im_start|>user");
    std::string last = at == std::string::npos ? p : p.substr(at);
    for (auto& [k, v] : canned)
      if (last.find(k) != std::string::npos) return v;
    return std::string("It is sunny.");
  };
  serve::ModelInfo info;
  info.name = "fake-qwen3";
  info.max_model_len = 1 << 16;
  info.vocab_size = int64_t(tok->vocab_size());
  info.defaults.temperature = 1.0f;
  info.tool_format = serve::detect_tool_call_format(tmpl.source());
  info.reasoning_format = serve::detect_reasoning_format(tmpl.source());
  serve::ServerConfig cfg;
  cfg.port = argc > 1 ? std::atoi(argv[1]) : 0;
  serve::Server server(engine, tok.get(), &tmpl, info, cfg);
  server.start();
  std::printf("%d\n", server.port());
  std::fflush(stdout);
  server.run(/*handle_signals=*/true);
  return 0;
}
