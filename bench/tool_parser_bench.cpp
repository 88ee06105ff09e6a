// Cost of the chat output parsers (serve/chat_tools.h): a Qwen3-style output (a <think> block,
// text, then hermes tool calls with nested arguments) fed as the engine streams it, a few bytes
// per token, through reasoning + tool-call parsing; and the same one-shot. Prints nanoseconds per
// byte and per streamed piece: the per-token overhead a streaming request pays.
//   tool_parser_bench [REPEATS]   (default 2000)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "serve/chat_tools.h"

using namespace gale::serve;

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 2000;
  std::string text = "<think>\n";
  for (int i = 0; i < 40; ++i) text += "The user asks for the weather in several cities; I should call the tool for each. ";
  text += "\n</think>\n\nLet me look these up.\n";
  for (const char* city : {"Paris", "Oslo", "Rome", "Z\\u00fcrich"})
    text += std::string("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"") + city +
            "\", \"unit\": \"celsius\", \"days\": [1, 2, 3], \"opts\": {\"hourly\": false, \"note\": \"a \\\"quoted\\\" {brace}\"}}}\n</tool_call>\n";
  std::vector<std::string> pieces;  // ~4 bytes per token, as BPE text streams
  for (size_t i = 0; i < text.size(); i += 4) pieces.push_back(text.substr(i, 4));
  ChatParsing p;
  p.tool_format = ToolCallFormat::Hermes;
  p.reasoning = ReasoningFormat::Qwen3;

  size_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) {
    ChatOutputParser s(p);
    for (auto& piece : pieces) {
      auto o = s.feed(piece);
      sink += o.content.size() + o.reasoning.size() + o.calls.size();
    }
    sink += s.finish().content.size() + s.calls().size();
  }
  const double streamed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) sink += parse_chat_output(p, text).calls.size();
  const double whole = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double bytes = double(text.size()) * repeats;
  std::printf("{\"bytes\": %zu, \"pieces\": %zu, \"repeats\": %d, \"streamed_ns_per_byte\": %.2f, "
              "\"streamed_ns_per_piece\": %.1f, \"one_shot_ns_per_byte\": %.2f, \"sink\": %zu}\n",
              text.size(), pieces.size(), repeats, streamed * 1e9 / bytes, streamed * 1e9 / (double(pieces.size()) * repeats),
              whole * 1e9 / bytes, sink);
  return 0;
}
