// Tool calls in a model's output, parsed into OpenAI `tool_calls`, incrementally.
//
// One ToolCallParser per choice: feed() it the text as the engine produces it, finish() at the
// end. Each call returns what can be sent now: content text that cannot be the start of a tool
// call, and tool-call deltas (the first delta of a call carries its id and name, the next ones
// pieces of `arguments`). Text that may still turn into a call (a partial "<tool_call>" tag, the
// call's JSON before its arguments start) is held back until it is decided. The parser works
// byte by byte, so the result does not depend on how the text is split: the one-shot result
// (parse()) is feed(all) + finish().
//
// Formats (vLLM's parser names):
//   hermes       Qwen2.5, Qwen3, Hermes: <tool_call>{"name": ..., "arguments": {...}}</tool_call>,
//                any number of blocks, text around them is content.
//   llama3_json  Llama 3.1 / 3.2: the output is {"name": ..., "parameters": {...}} (optionally
//                after <|python_tag|>, several separated by ';'); output that does not start with a
//                call is all content.
//   mistral      Mistral v0.3: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] after any content.
//
// What counts as a call, and malformed output (the rule is documented in README.md):
//   - A call starts at its marker (or, for llama3_json, at the output's first '{'). Its JSON object
//     must begin with string keys; "name" (a string) and "arguments" / "parameters" are read, any
//     other key is skipped. The call is committed (its id and name are sent) when its arguments
//     value starts, or at the object's '}' when it has a name but no arguments ("{}"; llama3_json,
//     which has no marker, needs "parameters" or "arguments": {"name": "Bob"} is an answer).
//   - Malformed JSON before that point: the marker and everything read since are content again
//     (a model that writes "<tool_call>" in prose loses nothing).
//   - After that point the call stands, and `arguments` is the model's own text of the value, byte
//     for byte, whether or not it turns out to be valid JSON (truncated by max_tokens, or broken):
//     OpenAI documents that arguments may be invalid JSON and must be validated by the caller. The
//     rest of a broken block is dropped (hermes: up to </tool_call>; the others: to the end).
//   - Whitespace just before a call, and at the end of an output that has calls, is dropped.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gale::serve {

enum class ToolCallFormat { None, Hermes, Llama3Json, Mistral };

// "hermes", "llama3_json", "mistral", "none"; "auto" gives nullopt (detect). Throws gale::Error
// naming the choices for anything else.
std::optional<ToolCallFormat> tool_call_format_from_name(std::string_view name);
const char* tool_call_format_name(ToolCallFormat f);
// From a chat template's text: "<tool_call>" -> hermes, "[TOOL_CALLS]" -> mistral, Llama 3's
// "<|python_tag|>" or its '"parameters": ' call layout -> llama3_json; else none.
ToolCallFormat detect_tool_call_format(std::string_view chat_template_source);

struct ToolCall {
  std::string id, name, arguments;  // arguments: JSON text
};

// One piece of a call while streaming: id and name in the call's first delta only.
struct ToolCallDelta {
  int index = 0;
  std::string id, name, arguments;
  bool first = false;
};

struct ToolParseOutput {
  std::string content;
  std::vector<ToolCallDelta> calls;
  bool empty() const { return content.empty() && calls.empty(); }
};

// Call ids: "call_" + 24 random hex digits; Mistral's templates require 9 alphanumerics.
std::string make_tool_call_id(ToolCallFormat f);

class ToolCallParser {
 public:
  using IdMaker = std::function<std::string()>;
  explicit ToolCallParser(ToolCallFormat format, IdMaker make_id = {});
  ToolParseOutput feed(std::string_view text);
  ToolParseOutput finish();  // end of output: what was held back is decided
  const std::vector<ToolCall>& calls() const { return calls_; }
  ToolCallFormat format() const { return format_; }

  struct Result {
    std::string content;
    std::vector<ToolCall> calls;
  };
  static Result parse(ToolCallFormat format, std::string_view text, IdMaker make_id = {});

 private:
  enum class St {
    Content,      // outside calls, looking for the marker
    L3Start,      // llama3_json: leading whitespace, maybe <|python_tag|>
    MistralOpen,  // after [TOOL_CALLS]: '[' or '{'
    ObjOpen,      // expecting the call's '{'
    Key,          // expecting a key or '}'
    InKey,
    Colon,
    ValueStart,
    InName,
    InValue,      // a value being scanned (arguments are sent as they come)
    AfterValue,   // ',' or '}'
    AfterCall,    // after a call's '}': closing tag / separator
    Skip,         // rest of a broken call
    Tail,         // llama3_json after its calls / non-call output: everything is content
  };
  void step(char c);
  void content_byte(char c);
  void start_call();           // marker seen: begin the call object
  void fail();                 // malformed JSON
  void commit();               // send id + name
  void call_done();            // object closed
  void add_args(std::string_view s);
  bool value_byte(char c, bool& consumed);  // generic JSON value scanner; true when the value ended

  ToolCallFormat format_;
  IdMaker make_id_;
  St st_;
  ToolParseOutput out_;
  std::vector<ToolCall> calls_;
  std::string marker_, close_;     // format's opening marker / closing tag ("" = none)
  std::string held_ws_, held_m_;   // content held back: whitespace, a marker prefix
  std::string pre_ws_, raw_;       // text of the call being read (given back on failure)
  std::string key_, name_, args_;  // current key; the call's name (raw JSON string body); early args
  bool have_name_ = false, have_args_ = false, committed_ = false, in_array_ = false;
  bool args_value_ = false;        // the value being scanned is the arguments
  bool esc_ = false, in_str_ = false;
  std::string stack_;              // open brackets of the value being scanned
  bool scalar_ = false;            // the value being scanned is a number / literal
  char cur_ = 0;                   // the byte being read
  size_t close_pos_ = 0;           // hermes: bytes of </tool_call> matched (Skip / AfterCall)
};

}  // namespace gale::serve
