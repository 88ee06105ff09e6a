// Tool-call parsing: one byte-driven state machine for the three formats (see the header).
#include "serve/tool_call_parser.h"

#include <nlohmann/json.hpp>

#include <random>

#include "core/error.h"

namespace gale::serve {

namespace {

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
bool is_scalar_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' || c == '.';
}

constexpr size_t kMaxKeyBytes = 256;    // a call's keys are short words: longer is not a call
constexpr size_t kMaxNameBytes = 1024;  // function names are at most 64 characters (OpenAI)
constexpr size_t kMaxDepth = 128;       // nesting of an arguments value

}  // namespace

std::optional<ToolCallFormat> tool_call_format_from_name(std::string_view name) {
  if (name == "auto") return std::nullopt;
  if (name == "hermes") return ToolCallFormat::Hermes;
  if (name == "llama3_json") return ToolCallFormat::Llama3Json;
  if (name == "mistral") return ToolCallFormat::Mistral;
  if (name == "none") return ToolCallFormat::None;
  throw Error("unknown tool-call parser '" + std::string(name) + "' (auto, hermes, llama3_json, mistral or none)");
}

const char* tool_call_format_name(ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::Hermes: return "hermes";
    case ToolCallFormat::Llama3Json: return "llama3_json";
    case ToolCallFormat::Mistral: return "mistral";
    case ToolCallFormat::None: break;
  }
  return "none";
}

ToolCallFormat detect_tool_call_format(std::string_view src) {
  if (src.find("<tool_call>") != std::string_view::npos) return ToolCallFormat::Hermes;
  if (src.find("[TOOL_CALLS]") != std::string_view::npos) return ToolCallFormat::Mistral;
  if (src.find("<|python_tag|>") != std::string_view::npos ||
      (src.find("\"parameters\": ") != std::string_view::npos && src.find("<|start_header_id|>") != std::string_view::npos))
    return ToolCallFormat::Llama3Json;
  return ToolCallFormat::None;
}

std::string make_tool_call_id(ToolCallFormat f) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  if (f == ToolCallFormat::Mistral) {  // its template refuses ids that are not 9 alphanumerics
    static const char* an = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    std::string s;
    for (int i = 0; i < 9; ++i) s += an[rng() % 62];
    return s;
  }
  static const char* hex = "0123456789abcdef";
  std::string s = "call_";
  for (int i = 0; i < 24; ++i) s += hex[rng() & 15];
  return s;
}

ToolCallParser::ToolCallParser(ToolCallFormat format, IdMaker make_id)
    : format_(format), make_id_(std::move(make_id)) {
  if (!make_id_) make_id_ = [f = format] { return make_tool_call_id(f); };
  switch (format_) {
    case ToolCallFormat::Hermes:
      marker_ = "<tool_call>";
      close_ = "</tool_call>";
      st_ = St::Content;
      break;
    case ToolCallFormat::Mistral:
      marker_ = "[TOOL_CALLS]";
      st_ = St::Content;
      break;
    case ToolCallFormat::Llama3Json:
      marker_ = "<|python_tag|>";  // only at the start (L3Start)
      st_ = St::L3Start;
      break;
    case ToolCallFormat::None:
      st_ = St::Tail;
      break;
  }
}

ToolParseOutput ToolCallParser::feed(std::string_view text) {
  for (char c : text) step(c);
  ToolParseOutput o = std::move(out_);
  out_ = {};
  return o;
}

ToolCallParser::Result ToolCallParser::parse(ToolCallFormat format, std::string_view text, IdMaker make_id) {
  ToolCallParser p(format, std::move(make_id));
  Result r;
  r.content = p.feed(text).content;
  r.content += p.finish().content;
  r.calls = p.calls();
  return r;
}

ToolParseOutput ToolCallParser::finish() {
  switch (st_) {
    case St::Content:
      if (!held_m_.empty()) out_.content += held_ws_ + held_m_;
      else if (calls_.empty()) out_.content += held_ws_;
      break;
    case St::L3Start:
      out_.content += held_ws_ + held_m_;
      break;
    case St::Tail:
    case St::AfterCall:
    case St::Skip:
      break;
    default:  // inside a call: a committed one stands as it is; else its text is content
      if (!committed_) out_.content += pre_ws_ + raw_;
      break;
  }
  held_ws_.clear();
  held_m_.clear();
  raw_.clear();
  pre_ws_.clear();
  st_ = St::Tail;
  ToolParseOutput o = std::move(out_);
  out_ = {};
  return o;
}

void ToolCallParser::content_byte(char c) {
  if (!marker_.empty() && (!held_m_.empty() || c == marker_[0])) {
    held_m_ += c;
    if (marker_.compare(0, held_m_.size(), held_m_) == 0) {
      if (held_m_.size() == marker_.size()) {
        pre_ws_ = std::move(held_ws_);
        held_ws_.clear();
        raw_ = std::move(held_m_);
        held_m_.clear();
        start_call();
      }
      return;
    }
    // Not the marker: its first byte is text; the rest may start it again.
    std::string rest = held_m_.substr(1);
    out_.content += held_ws_;
    out_.content += held_m_[0];
    held_ws_.clear();
    held_m_.clear();
    for (char r : rest) content_byte(r);
    return;
  }
  if (is_ws(c)) {
    held_ws_ += c;
    return;
  }
  out_.content += held_ws_;
  held_ws_.clear();
  out_.content += c;
}

void ToolCallParser::start_call() {
  st_ = format_ == ToolCallFormat::Mistral ? St::MistralOpen : St::ObjOpen;
}

void ToolCallParser::fail() {
  if (committed_) {  // the byte that broke the call may begin </tool_call>
    st_ = St::Skip;
    close_pos_ = format_ == ToolCallFormat::Hermes && cur_ == close_[0] ? 1 : 0;
    return;
  }
  out_.content += pre_ws_ + raw_;
  pre_ws_.clear();
  raw_.clear();
  st_ = format_ == ToolCallFormat::Llama3Json ? St::Tail : St::Content;
}

void ToolCallParser::commit() {
  std::string name;
  try {
    name = nlohmann::json::parse("\"" + name_ + "\"").get<std::string>();
  } catch (const nlohmann::json::exception&) {
    name = name_;  // not reachable for a name the scanner accepted but for bad escapes: keep the raw text
  }
  ToolCall call{make_id_(), std::move(name), ""};
  ToolCallDelta d;
  d.index = int(calls_.size());
  d.id = call.id;
  d.name = call.name;
  d.first = true;
  calls_.push_back(std::move(call));
  out_.calls.push_back(std::move(d));
  committed_ = true;
  raw_.clear();
  pre_ws_.clear();
  if (!args_.empty()) {
    std::string a = std::move(args_);
    args_.clear();
    add_args(a);
  }
}

void ToolCallParser::add_args(std::string_view s) {
  if (!committed_) {
    args_ += s;
    return;
  }
  calls_.back().arguments += s;
  const int index = int(calls_.size()) - 1;
  if (!out_.calls.empty() && out_.calls.back().index == index) {
    out_.calls.back().arguments += s;
  } else {
    ToolCallDelta d;
    d.index = index;
    d.arguments = std::string(s);
    out_.calls.push_back(std::move(d));
  }
}

void ToolCallParser::call_done() {
  // llama3_json has no marker: an object without arguments is a JSON answer, not a call.
  if (!have_args_ && !committed_ && format_ == ToolCallFormat::Llama3Json) return fail();
  if (!committed_) commit();
  if (!have_args_) add_args("{}");
  committed_ = false;
  raw_.clear();
  pre_ws_.clear();
  close_pos_ = 0;
  st_ = St::AfterCall;
}

// 0: more; 1: the value ended with c; 2: it ended before c (c is the next token); -1: malformed.
int value_scan(char c, std::string& stack, bool& in_str, bool& esc, bool& scalar) {
  if (in_str) {
    if (esc) esc = false;
    else if (c == '\\') esc = true;
    else if (c == '"') {
      in_str = false;
      return stack.empty() ? 1 : 0;
    } else if ((unsigned char)c < 0x20) return -1;
    return 0;
  }
  if (scalar) {
    if (is_scalar_char(c)) return 0;
    scalar = false;
    if (stack.empty()) return 2;
  }
  switch (c) {
    case '"': in_str = true; return 0;
    case '{':
    case '[':
      if (stack.size() >= kMaxDepth) return -1;
      stack += c;
      return 0;
    case '}':
    case ']':
      if (stack.empty() || stack.back() != (c == '}' ? '{' : '[')) return -1;
      stack.pop_back();
      return stack.empty() ? 1 : 0;
    default: break;
  }
  if (is_scalar_char(c)) {
    scalar = true;
    return 0;
  }
  if (!stack.empty() && (is_ws(c) || c == ',' || c == ':')) return 0;
  return -1;
}

void ToolCallParser::step(char c) {
  const bool reading_call = st_ == St::MistralOpen || st_ == St::ObjOpen || st_ == St::Key || st_ == St::InKey ||
                            st_ == St::Colon || st_ == St::ValueStart || st_ == St::InName || st_ == St::InValue ||
                            st_ == St::AfterValue;
  if (reading_call && !committed_) raw_ += c;
  cur_ = c;
  for (;;) {  // `continue` hands c to the next state
    switch (st_) {
      case St::Content:
        return content_byte(c);
      case St::Tail:
        out_.content += c;
        return;
      case St::L3Start:
        if (!held_m_.empty() || c == '<') {
          held_m_ += c;
          if (marker_.compare(0, held_m_.size(), held_m_) != 0) {
            out_.content += held_ws_ + held_m_;
            held_ws_.clear();
            held_m_.clear();
            st_ = St::Tail;
          } else if (held_m_.size() == marker_.size()) {
            pre_ws_ = std::move(held_ws_);
            held_ws_.clear();
            raw_ = std::move(held_m_);
            held_m_.clear();
            st_ = St::ObjOpen;
          }
          return;
        }
        if (is_ws(c)) {
          held_ws_ += c;
          return;
        }
        if (c == '{') {
          pre_ws_ = std::move(held_ws_);
          held_ws_.clear();
          raw_ = "{";
          st_ = St::ObjOpen;
          continue;
        }
        out_.content += held_ws_;
        out_.content += c;
        held_ws_.clear();
        st_ = St::Tail;
        return;
      case St::MistralOpen:
        if (is_ws(c)) return;
        if (c == '[') {
          in_array_ = true;
          st_ = St::ObjOpen;
          return;
        }
        in_array_ = false;
        st_ = St::ObjOpen;
        continue;
      case St::ObjOpen:
        if (is_ws(c)) return;
        if (c != '{') return fail();
        have_name_ = have_args_ = committed_ = false;
        name_.clear();
        args_.clear();
        st_ = St::Key;
        return;
      case St::Key:
        if (is_ws(c)) return;
        if (c == '"') {
          key_.clear();
          esc_ = false;
          st_ = St::InKey;
          return;
        }
        if (c == '}' && have_name_) return call_done();
        return fail();
      case St::InKey:
        if (esc_) esc_ = false;
        else if (c == '\\') esc_ = true;
        else if (c == '"') {
          st_ = St::Colon;
          return;
        }
        key_ += c;
        if (key_.size() > kMaxKeyBytes) return fail();
        return;
      case St::Colon:
        if (is_ws(c)) return;
        if (c != ':') return fail();
        st_ = St::ValueStart;
        return;
      case St::ValueStart:
        if (is_ws(c)) return;
        stack_.clear();
        in_str_ = esc_ = scalar_ = false;
        if (key_ == "name") {
          if (have_name_ || c != '"') return fail();
          name_.clear();
          st_ = St::InName;
          return;
        }
        args_value_ = key_ == "arguments" || key_ == "parameters";
        if (args_value_) {
          if (have_args_) return fail();
          if (have_name_ && !committed_) commit();
        }
        st_ = St::InValue;
        continue;
      case St::InName:
        if (esc_) esc_ = false;
        else if (c == '\\') esc_ = true;
        else if (c == '"') {
          have_name_ = true;
          if (have_args_) commit();  // arguments came first: send them whole now
          st_ = St::AfterValue;
          return;
        } else if ((unsigned char)c < 0x20) return fail();
        name_ += c;
        if (name_.size() > kMaxNameBytes) return fail();
        return;
      case St::InValue: {
        const int r = value_scan(c, stack_, in_str_, esc_, scalar_);
        if (r < 0) return fail();
        if (r != 2 && args_value_) add_args(std::string_view(&c, 1));
        if (r == 0) return;
        if (args_value_) have_args_ = true;
        st_ = St::AfterValue;
        if (r == 1) return;
        continue;
      }
      case St::AfterValue:
        if (is_ws(c)) return;
        if (c == ',') {
          st_ = St::Key;
          return;
        }
        if (c == '}') {
          if (!have_name_) return fail();
          return call_done();
        }
        return fail();
      case St::AfterCall:
        if (format_ == ToolCallFormat::Hermes) {
          if (close_pos_ == 0 && is_ws(c)) return;
          if (c == close_[close_pos_]) {
            if (++close_pos_ == close_.size()) {
              close_pos_ = 0;
              st_ = St::Content;
            }
            return;
          }
          close_pos_ = 0;  // no closing tag: what follows is content
          st_ = St::Content;
          continue;
        }
        if (format_ == ToolCallFormat::Llama3Json) {
          if (is_ws(c)) return;
          if (c == ';') {
            st_ = St::ObjOpen;
            return;
          }
          st_ = St::Tail;
          continue;
        }
        // mistral
        if (in_array_) {
          if (is_ws(c)) return;
          if (c == ',') {
            st_ = St::ObjOpen;
            return;
          }
          in_array_ = false;
          st_ = St::Content;
          if (c == ']') return;
          continue;
        }
        st_ = St::Content;
        continue;
      case St::Skip:
        if (format_ != ToolCallFormat::Hermes) return;
        if (c == close_[close_pos_]) {
          if (++close_pos_ == close_.size()) {
            close_pos_ = 0;
            committed_ = false;
            st_ = St::Content;
          }
        } else {
          close_pos_ = c == close_[0] ? 1 : 0;
        }
        return;
    }
    return;
  }
}

}  // namespace gale::serve
