// libFuzzer: arbitrary text as a model's output through the tool-call parsers (hermes,
// llama3_json, mistral), the reasoning parsers (qwen3 from outside and inside the block,
// deepseek_r1) and both together, in chunks cut where the input's first bytes say. The streamed
// result must equal the one-shot one; a difference, an exception or a crash is a bug.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "serve/chat_tools.h"

namespace {

using namespace gale::serve;

ToolCallParser::IdMaker ids() {
  auto n = std::make_shared<int>(0);
  return [n] { return std::to_string((*n)++); };
}

std::vector<std::string_view> chunks(std::string_view text, uint64_t seed) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    size_t n = 1 + size_t(seed >> 60);  // 1..16 bytes
    out.push_back(text.substr(i, n));
    i += n;
  }
  return out;
}

void check_tools(ToolCallFormat f, std::string_view text, uint64_t seed) {
  ToolCallParser::Result one = ToolCallParser::parse(f, text, ids());
  ToolCallParser p(f, ids());
  std::string content;
  std::vector<ToolCall> calls;
  auto take = [&](const ToolParseOutput& o) {
    content += o.content;
    for (auto& d : o.calls) {
      if (d.first) calls.push_back({d.id, d.name, d.arguments});
      else if (calls.empty() || d.index != int(calls.size()) - 1) __builtin_trap();
      else calls.back().arguments += d.arguments;
    }
  };
  for (auto c : chunks(text, seed)) take(p.feed(c));
  take(p.finish());
  if (content != one.content || calls.size() != one.calls.size()) __builtin_trap();
  for (size_t i = 0; i < calls.size(); ++i)
    if (calls[i].id != one.calls[i].id || calls[i].name != one.calls[i].name || calls[i].arguments != one.calls[i].arguments)
      __builtin_trap();
  if (content.size() > text.size()) __builtin_trap();  // nothing is made up
}

void check_reasoning(ReasoningFormat f, bool inside, std::string_view text, uint64_t seed) {
  auto one = ReasoningParser::parse(f, inside, text);
  ReasoningParser p(f, inside);
  std::string r, c;
  for (auto piece : chunks(text, seed)) {
    auto o = p.feed(piece);
    r += o.reasoning;
    c += o.content;
  }
  auto o = p.finish();
  if (r + o.reasoning != one.reasoning || c + o.content != one.content) __builtin_trap();
  if (one.reasoning.size() + one.content.size() > text.size()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint64_t seed = data[0];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  for (auto f : {ToolCallFormat::Hermes, ToolCallFormat::Llama3Json, ToolCallFormat::Mistral}) check_tools(f, text, seed);
  for (bool inside : {false, true}) check_reasoning(ReasoningFormat::Qwen3, inside, text, seed);
  check_reasoning(ReasoningFormat::DeepSeekR1, false, text, seed);
  // Both, as a chat request runs them.
  ChatParsing p;
  p.tool_format = ToolCallFormat::Hermes;
  p.reasoning = ReasoningFormat::Qwen3;
  ParsedChatMessage whole = parse_chat_output(p, text);
  ChatOutputParser s(p);
  std::string r, c;
  for (auto piece : chunks(text, seed + 1)) {
    auto o = s.feed(piece);
    r += o.reasoning;
    c += o.content;
  }
  auto o = s.finish();
  if (r + o.reasoning != whole.reasoning || c + o.content != whole.content || s.calls().size() != whole.calls.size())
    __builtin_trap();
  return 0;
}
