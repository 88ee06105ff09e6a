// Tools and reasoning in chat requests and responses (see chat_tools.h).
#include "serve/chat_tools.h"

#include "serve/openai_api.h"
#include "grammar/grammar.h"
#include "serve/tool_grammar.h"

namespace gale::serve {

using ojson = nlohmann::ordered_json;

namespace {

bool valid_function_name(const std::string& s) {  // OpenAI: ^[a-zA-Z0-9_-]{1,64}$
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return false;
  return true;
}

[[noreturn]] void bad_tools(const std::string& what) { throw ApiError(400, what, "tools"); }

}  // namespace

ojson parse_tools(const ojson& body) {
  auto it = body.find("tools");
  if (it == body.end() || it->is_null()) return nullptr;
  if (!it->is_array()) bad_tools("'tools' must be a list");
  if (it->empty()) bad_tools("'tools' must not be empty (leave it out for no tools)");
  if (it->size() > kMaxTools) bad_tools("'tools' takes at most " + std::to_string(kMaxTools) + " tools");
  for (size_t i = 0; i < it->size(); ++i) {
    const ojson& t = (*it)[i];
    const std::string at = "tools[" + std::to_string(i) + "]";
    if (!t.is_object()) bad_tools(at + " must be an object");
    auto type = t.find("type");
    if (type == t.end() || *type != "function") bad_tools(at + ".type must be 'function'");
    auto f = t.find("function");
    if (f == t.end() || !f->is_object()) bad_tools(at + ".function must be an object");
    auto name = f->find("name");
    if (name == f->end() || !name->is_string()) bad_tools(at + ".function.name is required (a string)");
    if (!valid_function_name(name->get<std::string>()))
      bad_tools(at + ".function.name must be 1 to 64 letters, digits, '_' or '-', got " + name->dump());
    if (auto d = f->find("description"); d != f->end() && !d->is_string() && !d->is_null())
      bad_tools(at + ".function.description must be a string");
    if (auto p = f->find("parameters"); p != f->end() && !p->is_object() && !p->is_null())
      bad_tools(at + ".function.parameters must be a JSON schema object");
    if (auto s = f->find("strict"); s != f->end() && !s->is_boolean() && !s->is_null())
      bad_tools(at + ".function.strict must be a boolean");
  }
  return *it;
}

void parse_tool_choice(const ojson& body, const ojson& tools, ToolCallFormat model_format, ChatParsing& p) {
  p.tool_choice = tools.is_null() ? "none" : "auto";
  p.tool_name.clear();
  p.parallel = true;
  if (auto ptc = body.find("parallel_tool_calls"); ptc != body.end() && !ptc->is_null()) {
    if (!ptc->is_boolean()) throw ApiError(400, "'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
    p.parallel = ptc->get<bool>();
  }
  auto it = body.find("tool_choice");
  if (it != body.end() && !it->is_null()) {
    const ojson& tc = *it;
    if (tc.is_string()) {
      const std::string s = tc.get<std::string>();
      if (s != "none" && s != "auto" && s != "required")
        throw ApiError(400, "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}, got " + tc.dump(), "tool_choice");
      p.tool_choice = s;
    } else if (tc.is_object()) {
      auto type = tc.find("type");
      auto f = tc.find("function");
      const ojson* name = nullptr;
      if (f != tc.end() && f->is_object())
        if (auto n = f->find("name"); n != f->end()) name = &*n;
      if (type == tc.end() || *type != "function" || !name || !name->is_string())
        throw ApiError(400, "'tool_choice' as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                       "tool_choice");
      p.tool_choice = "function";
      p.tool_name = name->get<std::string>();
    } else {
      throw ApiError(400, "'tool_choice' must be a string or an object", "tool_choice");
    }
    if (tools.is_null() && p.tool_choice != "none")
      throw ApiError(400, "'tool_choice' is only allowed when 'tools' are given", "tool_choice");
    if (p.tool_choice == "function") {
      bool found = false;
      for (auto& t : tools) found = found || t["function"]["name"] == p.tool_name;
      if (!found) throw ApiError(400, "'tool_choice' names function '" + p.tool_name + "', which is not in 'tools'", "tool_choice");
    }
  }
  p.tool_format = p.tool_choice == "none" ? ToolCallFormat::None : model_format;
  if ((p.tool_choice == "required" || p.tool_choice == "function") && model_format == ToolCallFormat::None)
    throw ApiError(400, "'tool_choice' '" + p.tool_choice + "' needs the model's tool-call format, which its chat "
                        "template does not show: start the server with --tool-call-parser", "tool_choice");
  if (p.tool_choice == "required" || p.tool_choice == "function") {
    // The arguments follow each tool's `parameters` schema, through the grammar engine's JSON
    // schema front end (what it refuses, e.g. numeric bounds, is a 400 naming the tools).
    const SchemaToGbnf args = schema_converter(
        [](const ojson& schema) { return json_schema_to_gbnf(nlohmann::json::parse(schema.dump())); });
    try {
      p.tool_grammar = tool_call_grammar(p.tool_format, tools, p.tool_name, args, /*single=*/!p.parallel);
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      throw ApiError(400, std::string("'tool_choice' '") + p.tool_choice + "' needs a grammar of the tools' parameters: " +
                              e.what(), "tools");
    }
  }
}

void prepare_tool_messages(ojson& messages) {
  for (auto& m : messages) {
    const std::string role = m.value("role", "");
    if (role == "tool") {
      auto id = m.find("tool_call_id");
      if (id != m.end() && !id->is_null() && !id->is_string())
        throw ApiError(400, "a tool message's 'tool_call_id' must be a string", "messages");
      continue;
    }
    auto tc = m.find("tool_calls");
    if (tc == m.end() || tc->is_null()) continue;
    if (role != "assistant") throw ApiError(400, "only assistant messages may have 'tool_calls'", "messages");
    if (!tc->is_array()) throw ApiError(400, "an assistant message's 'tool_calls' must be a list", "messages");
    for (auto& call : *tc) {
      auto f = call.is_object() ? call.find("function") : call.end();
      if (f == call.end() || !f->is_object() || !f->contains("name") || !(*f)["name"].is_string())
        throw ApiError(400, "each tool call needs 'function': {\"name\", \"arguments\"}", "messages");
      if (auto type = call.find("type"); type != call.end() && *type != "function")
        throw ApiError(400, "a tool call's 'type' must be 'function'", "messages");
      auto args = f->find("arguments");
      if (args == f->end() || !args->is_string()) continue;
      // OpenAI sends arguments as JSON text; the templates want the object (as vLLM hands them).
      // Nesting bounded as the body's (the template walks the object recursively); deeper or
      // invalid text stays a string.
      ojson::parser_callback_t bound = [](int depth, ojson::parse_event_t event, ojson&) {
        if ((event == ojson::parse_event_t::object_start || event == ojson::parse_event_t::array_start) &&
            depth >= kMaxJsonDepth - 8)
          throw ApiError(400, "too deep");
        return true;
      };
      try {
        ojson parsed = ojson::parse(args->get<std::string>(), bound);
        if (parsed.is_object()) *args = std::move(parsed);
      } catch (const ApiError&) {
      } catch (const ojson::exception&) {
      }
    }
    // OpenAI clients send "content": null beside tool calls; Qwen3's template tests `in content`,
    // which fails on None: the text form is "" (as vLLM renders it). Last: it may add a key,
    // which moves the message's members (`tc` above).
    if (auto c = m.find("content"); c == m.end() || c->is_null()) m["content"] = "";
  }
}

ChatOutputParser::ChatOutputParser(const ChatParsing& p) : parallel_(p.parallel) {
  if (p.reasoning != ReasoningFormat::None)
    reasoning_ = std::make_unique<ReasoningParser>(p.reasoning, p.reasoning_starts_inside);
  if (p.tool_format != ToolCallFormat::None) tools_ = std::make_unique<ToolCallParser>(p.tool_format);
}

ChatOutputParser::Piece ChatOutputParser::feed(std::string_view text) {
  Piece out;
  std::string content;
  if (reasoning_) {
    ReasoningOutput r = reasoning_->feed(text);
    out.reasoning = std::move(r.reasoning);
    content = std::move(r.content);
  } else {
    content = std::string(text);
  }
  if (tools_) {
    ToolParseOutput t = tools_->feed(content);
    out.content = std::move(t.content);
    out.calls = std::move(t.calls);
    keep_first_call(out.calls);
  } else {
    out.content = std::move(content);
  }
  return out;
}

ChatOutputParser::Piece ChatOutputParser::finish() {
  Piece out;
  std::string content;
  if (reasoning_) {
    ReasoningOutput r = reasoning_->finish();
    out.reasoning = std::move(r.reasoning);
    content = std::move(r.content);
  }
  if (tools_) {
    ToolParseOutput a = tools_->feed(content);
    ToolParseOutput b = tools_->finish();
    out.content = a.content + b.content;
    out.calls = std::move(a.calls);
    for (auto& d : b.calls) out.calls.push_back(std::move(d));
    keep_first_call(out.calls);
  } else {
    out.content = std::move(content);
  }
  return out;
}

// parallel_tool_calls false: OpenAI makes at most one call; later ones the model wrote are dropped.
void ChatOutputParser::keep_first_call(std::vector<ToolCallDelta>& deltas) const {
  if (parallel_) return;
  std::erase_if(deltas, [](const ToolCallDelta& d) { return d.index > 0; });
}

const std::vector<ToolCall>& ChatOutputParser::calls() const {
  static const std::vector<ToolCall> none;
  if (!tools_) return none;
  if (!parallel_ && tools_->calls().size() > 1) {
    first_only_.assign(tools_->calls().begin(), tools_->calls().begin() + 1);
    return first_only_;
  }
  return tools_->calls();
}

ParsedChatMessage parse_chat_output(const ChatParsing& p, std::string_view text) {
  ChatOutputParser parser(p);
  ParsedChatMessage m;
  m.reasoning_active = p.reasoning != ReasoningFormat::None;
  for (ChatOutputParser::Piece piece : {parser.feed(text), parser.finish()}) {
    m.reasoning += piece.reasoning;
    m.content += piece.content;
  }
  m.calls = parser.calls();
  return m;
}

std::string chat_finish_reason(const std::string& engine_reason, bool has_calls) {
  return has_calls && engine_reason == "stop" ? "tool_calls" : engine_reason;
}

ojson tool_calls_json(const std::vector<ToolCall>& calls) {
  ojson out = ojson::array();
  for (auto& c : calls)
    out.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  return out;
}

ojson tool_call_deltas_json(const std::vector<ToolCallDelta>& deltas) {
  ojson out = ojson::array();
  for (auto& d : deltas) {
    if (d.first)
      out.push_back({{"index", d.index}, {"id", d.id}, {"type", "function"},
                     {"function", {{"name", d.name}, {"arguments", d.arguments}}}});
    else
      out.push_back({{"index", d.index}, {"function", {{"arguments", d.arguments}}}});
  }
  return out;
}

}  // namespace gale::serve
