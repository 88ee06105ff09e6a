// Tools and reasoning in /v1/chat/completions: the request side (`tools`, `tool_choice`,
// assistant `tool_calls` and `role: "tool"` messages made ready for the chat template) and the
// output side (one ChatOutputParser per choice: reasoning first, then tool calls in what is left).
// The parsers themselves live in tool_call_parser.h and reasoning_parser.h.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "serve/reasoning_parser.h"
#include "serve/tool_call_parser.h"

namespace gale::serve {

constexpr size_t kMaxTools = 128;  // OpenAI's limit on `tools`

// What one chat request parses out of its output.
struct ChatParsing {
  ToolCallFormat tool_format = ToolCallFormat::None;  // None: no tool parsing for this request
  std::string tool_choice = "none";                   // "none", "auto", "required" or "function"
  std::string tool_name;                              // tool_choice "function": the one allowed
  bool parallel = true;                               // parallel_tool_calls: false keeps the first call only
  ReasoningFormat reasoning = ReasoningFormat::None;
  bool reasoning_starts_inside = false;               // the prompt opened <think>
  // tool_choice "required" / a named function: the GBNF grammar of the allowed calls in the
  // model's format (tool_grammar.h); parse_chat_request makes it the request's constraint.
  std::string tool_grammar;
  bool active() const { return tool_format != ToolCallFormat::None || reasoning != ReasoningFormat::None; }
  // Mistral's [TOOL_CALLS] is a special token: the request keeps special tokens in its text.
  bool keep_special_tokens() const { return tool_format == ToolCallFormat::Mistral; }
};

// `tools` validated (OpenAI's shape: [{"type": "function", "function": {"name", "description"?,
// "parameters"?, "strict"?}}]); null when absent. Throws ApiError 400 naming "tools".
nlohmann::ordered_json parse_tools(const nlohmann::ordered_json& body);
// `tool_choice` / `parallel_tool_calls` against the tools and the model's format; fills tool_choice,
// tool_name and tool_format. Throws ApiError 400 naming "tool_choice".
void parse_tool_choice(const nlohmann::ordered_json& body, const nlohmann::ordered_json& tools,
                       ToolCallFormat model_format, ChatParsing& p);
// Messages as the templates expect them: an assistant's tool_calls checked, and each call's
// `function.arguments` given as a JSON string (OpenAI's form) parsed into an object, as
// transformers' templates index and `tojson` it. `tool` messages need content; tool_call_id, when
// given, must be a string. Throws ApiError 400 naming "messages".
void prepare_tool_messages(nlohmann::ordered_json& messages);

// A whole output split into reasoning, content and tool calls.
struct ParsedChatMessage {
  bool reasoning_active = false;
  std::string reasoning, content;
  std::vector<ToolCall> calls;
};
ParsedChatMessage parse_chat_output(const ChatParsing& p, std::string_view text);

// The same while streaming: feed() each new piece, finish() at the end.
class ChatOutputParser {
 public:
  explicit ChatOutputParser(const ChatParsing& p);
  struct Piece {
    std::string reasoning, content;
    std::vector<ToolCallDelta> calls;
    bool empty() const { return reasoning.empty() && content.empty() && calls.empty(); }
  };
  Piece feed(std::string_view text);
  Piece finish();
  bool has_calls() const { return tools_ && !tools_->calls().empty(); }
  const std::vector<ToolCall>& calls() const;

 private:
  void keep_first_call(std::vector<ToolCallDelta>& deltas) const;
  bool parallel_ = true;
  mutable std::vector<ToolCall> first_only_;
  std::unique_ptr<ReasoningParser> reasoning_;
  std::unique_ptr<ToolCallParser> tools_;
};

// The finish_reason a choice reports: "tool_calls" when it made calls and stopped by itself.
std::string chat_finish_reason(const std::string& engine_reason, bool has_calls);

// OpenAI's message.tool_calls / delta.tool_calls entries.
nlohmann::ordered_json tool_calls_json(const std::vector<ToolCall>& calls);
nlohmann::ordered_json tool_call_deltas_json(const std::vector<ToolCallDelta>& deltas);

}  // namespace gale::serve
