// The tool-call and reasoning parsers (serve/tool_call_parser.h, serve/reasoning_parser.h) and the
// tool-call grammar (serve/tool_grammar.h). Expected values are written from the formats' published
// shapes (vLLM's hermes / llama3_json / mistral tool parsers and deepseek_r1 / qwen3 reasoning
// parsers describe the same layouts); every case is also fed byte by byte and in random splits,
// and the streamed result must equal the one-shot one.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <fstream>
#include <random>

#include "gbnf_matcher.h"
#include "serve/chat_tools.h"
#include "serve/tool_grammar.h"

using namespace gale;
using namespace gale::serve;
using ojson = nlohmann::ordered_json;

namespace {

ojson tools_json_for_parallel() {
  return ojson::parse(R"([{"type": "function", "function": {"name": "a"}}])");
}

ToolCallParser::IdMaker counter_ids() {
  auto n = std::make_shared<int>(0);
  return [n] { return "id" + std::to_string((*n)++); };
}

struct Streamed {
  std::string content;
  std::vector<ToolCall> calls;
};

// Feeds `text` in the given pieces and rebuilds content and calls from what was streamed out.
Streamed stream(ToolCallFormat f, const std::vector<std::string>& pieces) {
  ToolCallParser p(f, counter_ids());
  Streamed s;
  auto take = [&](const ToolParseOutput& o) {
    s.content += o.content;
    for (auto& d : o.calls) {
      if (d.first) {
        EXPECT_EQ(d.index, int(s.calls.size()));
        s.calls.push_back({d.id, d.name, d.arguments});
      } else {
        EXPECT_TRUE(d.id.empty() && d.name.empty());
        EXPECT_EQ(d.index, int(s.calls.size()) - 1);
        if (!s.calls.empty()) s.calls.back().arguments += d.arguments;
      }
    }
  };
  for (auto& piece : pieces) take(p.feed(piece));
  take(p.finish());
  // What was streamed is what the parser holds.
  EXPECT_EQ(p.calls().size(), s.calls.size());
  for (size_t i = 0; i < std::min(p.calls().size(), s.calls.size()); ++i) {
    EXPECT_EQ(p.calls()[i].name, s.calls[i].name);
    EXPECT_EQ(p.calls()[i].arguments, s.calls[i].arguments);
  }
  return s;
}

std::vector<std::vector<std::string>> splits(const std::string& text, uint64_t seed) {
  std::vector<std::vector<std::string>> out;
  out.push_back({text});
  std::vector<std::string> bytes;
  for (char c : text) bytes.push_back(std::string(1, c));
  out.push_back(bytes);
  std::mt19937_64 rng(seed);
  for (int k = 0; k < 50; ++k) {
    std::vector<std::string> v;
    size_t i = 0;
    while (i < text.size()) {
      size_t n = 1 + rng() % 7;
      v.push_back(text.substr(i, n));
      i += n;
    }
    out.push_back(v);
  }
  return out;
}

// One-shot result, checked equal under every split.
ToolCallParser::Result parse_all_ways(ToolCallFormat f, const std::string& text) {
  ToolCallParser::Result one = ToolCallParser::parse(f, text, counter_ids());
  for (auto& pieces : splits(text, std::hash<std::string>{}(text))) {
    Streamed s = stream(f, pieces);
    EXPECT_EQ(s.content, one.content) << text;
    EXPECT_EQ(s.calls.size(), one.calls.size()) << text;
    for (size_t i = 0; i < std::min(s.calls.size(), one.calls.size()); ++i) {
      EXPECT_EQ(s.calls[i].id, one.calls[i].id);
      EXPECT_EQ(s.calls[i].name, one.calls[i].name);
      EXPECT_EQ(s.calls[i].arguments, one.calls[i].arguments) << text;
    }
  }
  return one;
}

void expect_calls(const ToolCallParser::Result& r, const std::string& content,
                  const std::vector<std::pair<std::string, std::string>>& calls) {
  EXPECT_EQ(r.content, content);
  ASSERT_EQ(r.calls.size(), calls.size()) << r.content;
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(r.calls[i].name, calls[i].first);
    EXPECT_EQ(r.calls[i].arguments, calls[i].second);
  }
}

constexpr auto H = ToolCallFormat::Hermes;
constexpr auto L = ToolCallFormat::Llama3Json;
constexpr auto M = ToolCallFormat::Mistral;

TEST(ToolCallParser, HermesBlocks) {
  // Qwen2.5 / Qwen3 / Hermes write one block per call, the JSON on its own line.
  expect_calls(parse_all_ways(H, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
               "", {{"get_weather", "{\"city\": \"Paris\"}"}});
  expect_calls(parse_all_ways(H, "Let me check.\n\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
                                 "<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": [1, 2.5e3, -3], \"y\": null}}\n</tool_call>"),
               "Let me check.", {{"a", "{}"}, {"b", "{\"x\": [1, 2.5e3, -3], \"y\": null}"}});
  // Strings holding braces, quotes, escapes and the closing tag itself stay inside the arguments.
  expect_calls(parse_all_ways(H, "<tool_call>{\"name\": \"q\", \"arguments\": {\"s\": \"}]\\\"</tool_call>{\\\\\", \"u\": \"\\u00e9\"}}</tool_call>"),
               "", {{"q", "{\"s\": \"}]\\\"</tool_call>{\\\\\", \"u\": \"\\u00e9\"}"}});
  // Arguments before the name, no arguments, a name with an escape.
  expect_calls(parse_all_ways(H, "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>"), "", {{"f", "{\"a\": 1}"}});
  expect_calls(parse_all_ways(H, "<tool_call>{\"name\": \"f\"}</tool_call>"), "", {{"f", "{}"}});
  expect_calls(parse_all_ways(H, "<tool_call>{\"name\": \"f\\u0041\", \"arguments\": {}}</tool_call>"), "", {{"fA", "{}"}});
  // Other keys are skipped.
  expect_calls(parse_all_ways(H, "<tool_call>{\"id\": 7, \"name\": \"f\", \"arguments\": {\"k\": true}, \"x\": [{}]}</tool_call>"),
               "", {{"f", "{\"k\": true}"}});
  // Text between and after blocks is content.
  expect_calls(parse_all_ways(H, "A<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>B"), "AB", {{"f", "{}"}});
}

TEST(ToolCallParser, HermesMalformedStaysTextOrStands) {
  // Before the arguments start, malformed JSON is text again, marker included.
  for (std::string t : {"<tool_call>not json</tool_call>", "I can write <tool_call> in prose.", "<tool_call>{\"name\": 5}",
                        "<tool_call>{\"nam", "a <tool b <tool_cal", "<tool_call>", "<tool_call>{\"name\": \"f\" x}"})
    expect_calls(parse_all_ways(H, t), t, {});
  // After they start, the call stands with the model's text (OpenAI: arguments may be invalid JSON).
  expect_calls(parse_all_ways(H, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1"), "", {{"f", "{\"x\": 1"}});
  expect_calls(parse_all_ways(H, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1]}</tool_call>after"), "after",
               {{"f", "{\"a\": 1"}});
  // A missing closing brace: the block's rest is dropped up to </tool_call>.
  expect_calls(parse_all_ways(H, "<tool_call>{\"name\": \"f\", \"arguments\": {}</tool_call>x"), "x", {{"f", "{}"}});
  // Whitespace is kept where there are no calls.
  expect_calls(parse_all_ways(H, "  hi \n"), "  hi \n", {});
  expect_calls(parse_all_ways(H, ""), "", {});
}

TEST(ToolCallParser, Llama3Json) {
  // Llama 3.1 / 3.2: the whole output is the call, "parameters" for arguments.
  expect_calls(parse_all_ways(L, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"), "",
               {{"get_weather", "{\"city\": \"Paris\"}"}});
  expect_calls(parse_all_ways(L, "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": \"b\"}}"), "", {{"f", "{\"a\": \"b\"}"}});
  expect_calls(parse_all_ways(L, "\n{\"name\": \"a\", \"arguments\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": 1}}"), "",
               {{"a", "{}"}, {"b", "{\"x\": 1}"}});
  // Not a call: text, a JSON answer without arguments, or a call after text.
  for (std::string t : {"Hello {\"name\": \"f\", \"parameters\": {}}", "{\"answer\": 42}", "{\"name\": \"Bob\", \"age\": 3}",
                        "{\"name\": \"Bob\"}", "  ", "<|python_ta", "<|python_tag|>print(1)"})
    expect_calls(parse_all_ways(L, t), t, {});
  // Text after a call is content.
  expect_calls(parse_all_ways(L, "{\"name\": \"f\", \"parameters\": {}} done"), "done", {{"f", "{}"}});
}

TEST(ToolCallParser, Mistral) {
  auto r = parse_all_ways(M, "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {}}]");
  expect_calls(r, "", {{"f", "{\"a\": 1}"}, {"g", "{}"}});
  expect_calls(parse_all_ways(M, "Sure. [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]"), "Sure.", {{"f", "{}"}});
  expect_calls(parse_all_ways(M, "[TOOL_CALLS]{\"name\": \"f\", \"arguments\": {\"b\": [true]}}"), "", {{"f", "{\"b\": [true]}"}});
  for (std::string t : {"[TOOL_CALLS] nothing", "[TOOL", "[1, 2]"}) expect_calls(parse_all_ways(M, t), t, {});
  // Mistral's template accepts only 9 alphanumerics as ids.
  std::string id = make_tool_call_id(M);
  EXPECT_EQ(id.size(), 9u);
  for (char c : id) EXPECT_TRUE(isalnum((unsigned char)c)) << id;
  EXPECT_EQ(make_tool_call_id(H).rfind("call_", 0), 0u);
}

// Arbitrary text built from the formats' own pieces, in random splits: never a crash, and the
// streamed result is the one-shot one.
TEST(ToolCallParser, RandomTextSplitInvariant) {
  const std::vector<std::string> frags = {"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]",
                                          "\"name\"", "\"arguments\"", "\"parameters\"", ":", ",", ";", " ", "\n", "\"f\"",
                                          "\"a\\\"}\"", "1", "null", "x", "<", "<tool", "\\", "\"", "é"};
  std::mt19937_64 rng(123);
  for (int k = 0; k < 400; ++k) {
    std::string t;
    int n = 1 + int(rng() % 40);
    for (int i = 0; i < n; ++i) t += frags[rng() % frags.size()];
    for (auto f : {H, L, M}) parse_all_ways(f, t);
  }
}

TEST(ToolCallFormat, NamesAndDetection) {
  EXPECT_EQ(tool_call_format_from_name("hermes"), H);
  EXPECT_EQ(tool_call_format_from_name("llama3_json"), L);
  EXPECT_EQ(tool_call_format_from_name("mistral"), M);
  EXPECT_EQ(tool_call_format_from_name("none"), ToolCallFormat::None);
  EXPECT_EQ(tool_call_format_from_name("auto"), std::nullopt);
  EXPECT_ANY_THROW(tool_call_format_from_name("pythonic"));
  // The real templates of tests/fixtures/chat_templates.
  auto read = [](const std::string& m) {
    std::ifstream f(std::string(GALE_SOURCE_DIR) + "/tests/fixtures/chat_templates/" + m + "/chat_template.jinja");
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(detect_tool_call_format(read("qwen2.5")), H);
  EXPECT_EQ(detect_tool_call_format(read("qwen3")), H);
  EXPECT_EQ(detect_tool_call_format(read("llama3.2")), L);
  EXPECT_EQ(detect_tool_call_format(read("mistral-v0.3")), M);
  EXPECT_EQ(detect_tool_call_format(read("chatml")), ToolCallFormat::None);
  EXPECT_EQ(detect_tool_call_format(read("gemma3")), ToolCallFormat::None);
  EXPECT_EQ(detect_reasoning_format(read("qwen3")), ReasoningFormat::Qwen3);
  EXPECT_EQ(detect_reasoning_format(read("qwen2.5")), ReasoningFormat::None);
  EXPECT_EQ(detect_reasoning_format(read("llama3.2")), ReasoningFormat::None);
}

// ---- reasoning

ReasoningParser::Result reason_all_ways(ReasoningFormat f, bool inside, const std::string& text) {
  auto one = ReasoningParser::parse(f, inside, text);
  for (auto& pieces : splits(text, std::hash<std::string>{}(text) + 1)) {
    ReasoningParser p(f, inside);
    std::string r, c;
    for (auto& piece : pieces) {
      auto o = p.feed(piece);
      r += o.reasoning;
      c += o.content;
    }
    auto o = p.finish();
    EXPECT_EQ(r + o.reasoning, one.reasoning) << text;
    EXPECT_EQ(c + o.content, one.content) << text;
  }
  return one;
}

void expect_reasoning(const ReasoningParser::Result& r, const std::string& reasoning, const std::string& content) {
  EXPECT_EQ(r.reasoning, reasoning);
  EXPECT_EQ(r.content, content);
}

constexpr auto Q = ReasoningFormat::Qwen3;
constexpr auto R1 = ReasoningFormat::DeepSeekR1;

TEST(ReasoningParser, Qwen3) {
  // Qwen3 thinking: the model opens the block itself.
  expect_reasoning(reason_all_ways(Q, false, "<think>\nLet me think.\n</think>\n\nParis."), "\nLet me think.\n", "Paris.");
  expect_reasoning(reason_all_ways(Q, false, "\n<think>a</think>b"), "a", "b");
  // No block: all content, even a later <think>.
  expect_reasoning(reason_all_ways(Q, false, "Paris. <think>x</think>"), "", "Paris. <think>x</think>");
  expect_reasoning(reason_all_ways(Q, false, "<thin"), "", "<thin");
  expect_reasoning(reason_all_ways(Q, false, "<b>bold</b>"), "", "<b>bold</b>");
  // The prompt opened the block: the output starts inside it.
  expect_reasoning(reason_all_ways(Q, true, "step 1 < 2 </b> </thin</think>\n\nAnswer"), "step 1 < 2 </b> </thin", "Answer");
  // Cut off while thinking: all reasoning, a partial closing tag included.
  expect_reasoning(reason_all_ways(Q, true, "still thinking </thi"), "still thinking </thi", "");
  expect_reasoning(reason_all_ways(Q, false, "<think>abc"), "abc", "");
  expect_reasoning(reason_all_ways(Q, false, "<think></think>"), "", "");
  EXPECT_TRUE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|im_start|>assistant\n"));
}

TEST(ReasoningParser, DeepSeekR1) {
  // R1 always starts inside; a leading <think> written anyway is dropped.
  expect_reasoning(reason_all_ways(R1, false, "<think>\nx\n</think>\n\ny"), "\nx\n", "y");
  expect_reasoning(reason_all_ways(R1, false, "x</think>y"), "x", "y");
  expect_reasoning(reason_all_ways(R1, false, "<thinking>"), "<thinking>", "");
  expect_reasoning(reason_all_ways(R1, false, "no end"), "no end", "");
  EXPECT_EQ(reasoning_format_from_name("deepseek_r1"), R1);
  EXPECT_EQ(reasoning_format_from_name("auto"), std::nullopt);
  EXPECT_ANY_THROW(reasoning_format_from_name("r1"));
}

TEST(ReasoningParser, RandomTextSplitInvariant) {
  const std::vector<std::string> frags = {"<think>", "</think>", "<", "</", "</thi", "think>", "\n", " ", "a", "é"};
  std::mt19937_64 rng(7);
  for (int k = 0; k < 400; ++k) {
    std::string t;
    int n = 1 + int(rng() % 30);
    for (int i = 0; i < n; ++i) t += frags[rng() % frags.size()];
    for (auto f : {Q, R1})
      for (bool inside : {false, true}) {
        auto r = reason_all_ways(f, inside, t);
        EXPECT_LE(r.reasoning.size() + r.content.size(), t.size());
      }
  }
}

// Reasoning first, then tool calls in the content (Qwen3 thinks, then calls).
TEST(ChatOutputParser, ReasoningThenTools) {
  ChatParsing p;
  p.tool_format = H;
  p.reasoning = Q;
  const std::string text =
      "<think>\nI should call <tool_call> get_weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", "
      "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
  ParsedChatMessage m = parse_chat_output(p, text);
  EXPECT_EQ(m.reasoning, "\nI should call <tool_call> get_weather.\n");
  EXPECT_EQ(m.content, "");
  ASSERT_EQ(m.calls.size(), 1u);
  EXPECT_EQ(m.calls[0].name, "get_weather");
  EXPECT_EQ(m.calls[0].arguments, "{\"city\": \"Paris\"}");
  // Streamed byte by byte: the same.
  ChatOutputParser s(p);
  std::string r, c, args;
  for (char ch : text) {
    auto piece = s.feed(std::string_view(&ch, 1));
    r += piece.reasoning;
    c += piece.content;
    for (auto& d : piece.calls) args += d.arguments;
  }
  auto piece = s.finish();
  r += piece.reasoning;
  c += piece.content;
  EXPECT_EQ(r, m.reasoning);
  EXPECT_EQ(c, m.content);
  EXPECT_EQ(args, m.calls[0].arguments);
  EXPECT_TRUE(s.has_calls());
  EXPECT_EQ(chat_finish_reason("stop", true), "tool_calls");
  EXPECT_EQ(chat_finish_reason("length", true), "length");
  EXPECT_EQ(chat_finish_reason("stop", false), "stop");
}

// parallel_tool_calls false: only the first call is reported, streamed or not.
TEST(ChatOutputParser, ParallelFalseKeepsTheFirstCall) {
  ChatParsing p;
  p.tool_format = H;
  p.parallel = false;
  const std::string text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
  ParsedChatMessage m = parse_chat_output(p, text);
  ASSERT_EQ(m.calls.size(), 1u);
  EXPECT_EQ(m.calls[0].name, "a");
  ChatOutputParser s(p);
  int deltas_b = 0;
  for (char ch : text)
    for (auto& d : s.feed(std::string_view(&ch, 1)).calls) deltas_b += d.index > 0;
  EXPECT_EQ(deltas_b, 0);
  EXPECT_EQ(s.calls().size(), 1u);
  p.parallel = true;
  EXPECT_EQ(parse_chat_output(p, text).calls.size(), 2u);
  // The grammar then allows one call.
  test::Gbnf g(tool_call_grammar(H, tools_json_for_parallel(), "", {}, /*single=*/true));
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>"));
}

// ---- grammar for tool_choice required / named

ojson tools_json() {
  return ojson::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "a + b"}}])");
}

TEST(ToolGrammar, HermesRequiredAndNamed) {
  test::Gbnf g(tool_call_grammar(H, tools_json(), ""));
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": [2.5, -3e2, \"x\\n\\u00e9\"]}}\n</tool_call>\n"
                        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(g.matches(""));                      // required: at least one call
  EXPECT_FALSE(g.matches("Sure! <tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"sub\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 01}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": [1]}\n</tool_call>"));
  test::Gbnf named(tool_call_grammar(H, tools_json(), "add"));
  EXPECT_TRUE(named.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(named.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(named.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>\n"
                             "<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>"));
  // What the grammar allows, the parser reads back as the calls.
  auto r = ToolCallParser::parse(H, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"a\": 1}");
}

TEST(ToolGrammar, Llama3AndMistral) {
  test::Gbnf l(tool_call_grammar(L, tools_json(), ""));
  EXPECT_TRUE(l.matches("{\"name\": \"add\", \"parameters\": {\"a\": true}}"));
  EXPECT_TRUE(l.matches("{\"name\": \"add\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"x\"}}"));
  EXPECT_FALSE(l.matches("{\"name\": \"add\", \"arguments\": {}}"));
  test::Gbnf m(tool_call_grammar(M, tools_json(), "get_weather"));
  EXPECT_TRUE(m.matches("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]"));
  EXPECT_FALSE(m.matches("[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {}}]"));
  test::Gbnf m2(tool_call_grammar(M, tools_json(), ""));
  EXPECT_TRUE(m2.matches("[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {}}, {\"name\": \"add\", \"arguments\": {\"c\": null}}]"));
}

// The schema converter (the grammar engine's json_schema_to_gbnf) is used for tools with
// parameters, under the rule name it is given.
TEST(ToolGrammar, UsesTheSchemaConverter) {
  std::vector<std::string> names;
  SchemaToGbnf conv = [&](const ojson& schema, const std::string& rule) {
    names.push_back(rule);
    EXPECT_EQ(schema["required"][0], "city");
    return rule + " ::= \"{\\\"city\\\": \\\"\" " + rule + "-chars \"\\\"}\"\n" + rule + "-chars ::= [a-zA-Z]+\n";
  };
  test::Gbnf g(tool_call_grammar(H, tools_json(), "", conv));
  ASSERT_EQ(names.size(), 1u);  // "add" has no parameters: any object
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Paris\"}}\n</tool_call>"));
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"town\": \"Paris\"}}\n</tool_call>"));
}

// The grammar engine's json_schema_to_gbnf returns a whole grammar rooted at `root`: its rules are
// renamed into the tool grammar's namespace, literals / classes / comments / counts untouched.
TEST(ToolGrammar, WholeGrammarConverterIsRenamed) {
  const std::string whole =
      "# root: an object with a city\n"
      "root ::= \"{\" ws \"\\\"city\\\"\" ws \":\" ws str ws \"}\"\n"
      "str ::= \"\\\"\" [a-zA-Z_-]+ \"\\\"\"\n"
      "ws ::= [ ]*\n";
  EXPECT_EQ(gbnf_rename_rules("root ::= a-b \"root\" [root]{2,3} # root\na-b ::= \"x\"", "tc-args-0"),
            "tc-args-0 ::= tc-args-0-a-b \"root\" [root]{2,3} # root\ntc-args-0-a-b ::= \"x\"");
  test::Gbnf alone(whole);
  EXPECT_TRUE(alone.matches("{\"city\": \"Paris\"}"));
  test::Gbnf g(tool_call_grammar(H, tools_json(), "get_weather", schema_converter([&](const ojson&) { return whole; })));
  EXPECT_TRUE(g.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_FALSE(g.matches("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 5}}\n</tool_call>"));
}

TEST(ToolGrammar, Literal) {
  EXPECT_EQ(gbnf_literal("a\"b\\c\nd\x01"), "\"a\\\"b\\\\c\\nd\\x01\"");
  test::Gbnf g("root ::= " + gbnf_literal("x\"\\\n\t\x01y"));
  EXPECT_TRUE(g.matches("x\"\\\n\t\x01y"));
  EXPECT_THROW(test::Gbnf("root ::= undefined-rule"), std::runtime_error);
  EXPECT_THROW(test::Gbnf("root ::= \"open"), std::runtime_error);
}

}  // namespace
