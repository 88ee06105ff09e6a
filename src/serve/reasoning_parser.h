// Reasoning content: the model's <think> ... </think> block split from its answer, incrementally,
// as vLLM's deepseek_r1 / qwen3 reasoning parsers split it into `reasoning_content`.
//
// One ReasoningParser per choice: feed() the text as it comes, finish() at the end; each returns
// the reasoning and content text that is decided (a partial "</think>" is held back). Byte-driven,
// so the result does not depend on how the text is split.
//
//   qwen3        The output is content unless it begins (after whitespace) with <think>, or the
//                prompt already opened the block (the rendered prompt ends with "<think>", as
//                DeepSeek-R1's and some Qwen3 templates do): then it is reasoning up to </think>.
//   deepseek_r1  The output always starts inside the block (an optional leading <think> is dropped).
//
// Reasoning with no </think> (max_tokens hit while thinking) is all reasoning. Newlines just after
// </think> are dropped (Qwen3's template strips them too when the turn is sent back). `enable_thinking:
// false` in chat_template_kwargs turns the parser off for that request (the template closes the block
// in the prompt).
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace gale::serve {

enum class ReasoningFormat { None, Qwen3, DeepSeekR1 };

// "qwen3", "deepseek_r1", "none"; "auto" gives nullopt (detect). Throws gale::Error otherwise.
std::optional<ReasoningFormat> reasoning_format_from_name(std::string_view name);
const char* reasoning_format_name(ReasoningFormat f);
// From a chat template's text: one that mentions "<think>" or "</think>" -> qwen3 (whose rule also
// covers templates that open the block in the prompt); else none.
ReasoningFormat detect_reasoning_format(std::string_view chat_template_source);
// The rendered prompt ends (whitespace aside) with an open "<think>".
bool prompt_opens_reasoning(std::string_view prompt);

struct ReasoningOutput {
  std::string reasoning, content;
};

class ReasoningParser {
 public:
  // starts_inside: the prompt opened the block (prompt_opens_reasoning), or deepseek_r1.
  ReasoningParser(ReasoningFormat format, bool starts_inside);
  ReasoningOutput feed(std::string_view text);
  ReasoningOutput finish();

  struct Result {
    std::string reasoning, content;
    bool had_reasoning = false;  // a block was opened (reasoning may still be empty)
  };
  static Result parse(ReasoningFormat format, bool starts_inside, std::string_view text);
  bool had_reasoning() const { return had_reasoning_; }

 private:
  enum class St { Start, OpenTag, Reasoning, AfterEnd, Content };
  void step(char c);
  St st_;
  std::string held_;
  bool had_reasoning_ = false;
  ReasoningOutput out_;
};

}  // namespace gale::serve
