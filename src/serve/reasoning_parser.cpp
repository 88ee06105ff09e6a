// Reasoning parsing: a small byte-driven state machine (see the header).
#include "serve/reasoning_parser.h"

#include "core/error.h"

namespace gale::serve {

namespace {

constexpr std::string_view kOpen = "<think>";
constexpr std::string_view kClose = "</think>";

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

}  // namespace

std::optional<ReasoningFormat> reasoning_format_from_name(std::string_view name) {
  if (name == "auto") return std::nullopt;
  if (name == "qwen3") return ReasoningFormat::Qwen3;
  if (name == "deepseek_r1") return ReasoningFormat::DeepSeekR1;
  if (name == "none") return ReasoningFormat::None;
  throw Error("unknown reasoning parser '" + std::string(name) + "' (auto, qwen3, deepseek_r1 or none)");
}

const char* reasoning_format_name(ReasoningFormat f) {
  switch (f) {
    case ReasoningFormat::Qwen3: return "qwen3";
    case ReasoningFormat::DeepSeekR1: return "deepseek_r1";
    case ReasoningFormat::None: break;
  }
  return "none";
}

ReasoningFormat detect_reasoning_format(std::string_view src) {
  return src.find(kOpen) != std::string_view::npos || src.find(kClose) != std::string_view::npos
             ? ReasoningFormat::Qwen3
             : ReasoningFormat::None;
}

bool prompt_opens_reasoning(std::string_view p) {
  while (!p.empty() && is_ws(p.back())) p.remove_suffix(1);
  return p.size() >= kOpen.size() && p.substr(p.size() - kOpen.size()) == kOpen;
}

ReasoningParser::ReasoningParser(ReasoningFormat format, bool starts_inside) {
  if (format == ReasoningFormat::None) st_ = St::Content;
  else if (starts_inside || format == ReasoningFormat::DeepSeekR1) {
    st_ = St::OpenTag;
    had_reasoning_ = true;
  } else {
    st_ = St::Start;
  }
}

ReasoningOutput ReasoningParser::feed(std::string_view text) {
  for (char c : text) step(c);
  ReasoningOutput o = std::move(out_);
  out_ = {};
  return o;
}

ReasoningOutput ReasoningParser::finish() {
  switch (st_) {
    case St::Start: out_.content += held_; break;
    case St::OpenTag:
    case St::Reasoning: out_.reasoning += held_; break;
    default: break;
  }
  held_.clear();
  st_ = St::Content;
  ReasoningOutput o = std::move(out_);
  out_ = {};
  return o;
}

ReasoningParser::Result ReasoningParser::parse(ReasoningFormat format, bool starts_inside, std::string_view text) {
  ReasoningParser p(format, starts_inside);
  Result r;
  auto a = p.feed(text), b = p.finish();
  r.reasoning = a.reasoning + b.reasoning;
  r.content = a.content + b.content;
  r.had_reasoning = p.had_reasoning();
  return r;
}

void ReasoningParser::step(char c) {
  for (;;) {
    switch (st_) {
      case St::Start: {  // content unless the output opens with <think> (whitespace before it allowed)
        const size_t tag = held_.find('<');
        if (tag == std::string::npos && is_ws(c)) {
          held_ += c;
          return;
        }
        held_ += c;
        std::string_view t = std::string_view(held_).substr(held_.find('<') == std::string::npos ? held_.size() : held_.find('<'));
        if (!t.empty() && kOpen.substr(0, t.size()) == t) {
          if (t.size() == kOpen.size()) {
            held_.clear();
            had_reasoning_ = true;
            st_ = St::Reasoning;
          }
          return;
        }
        out_.content += held_;
        held_.clear();
        st_ = St::Content;
        return;
      }
      case St::OpenTag: {  // inside already: drop a leading <think> if the model writes it anyway
        held_ += c;
        if (kOpen.substr(0, held_.size()) == held_) {
          if (held_.size() == kOpen.size()) {
            held_.clear();
            st_ = St::Reasoning;
          }
          return;
        }
        std::string again = std::move(held_);
        held_.clear();
        st_ = St::Reasoning;
        for (char r : again) step(r);
        return;
      }
      case St::Reasoning:
        if (!held_.empty() || c == kClose[0]) {
          held_ += c;
          if (kClose.substr(0, held_.size()) == held_) {
            if (held_.size() == kClose.size()) {
              held_.clear();
              st_ = St::AfterEnd;
            }
            return;
          }
          // Not the closing tag: its first byte is reasoning; the rest may start it again.
          std::string rest = held_.substr(1);
          out_.reasoning += held_[0];
          held_.clear();
          for (char r : rest) step(r);
          return;
        }
        out_.reasoning += c;
        return;
      case St::AfterEnd:
        if (c == '\n' || c == '\r') return;
        st_ = St::Content;
        continue;
      case St::Content:
        out_.content += c;
        return;
    }
  }
}

}  // namespace gale::serve
