// The OpenAI body parser and validator called directly (no HTTP), and the batch format built on
// it (serve/openai_batch.h): the same rules for `gale serve` and `gale batch`.
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>

#include "grammar/grammar.h"
#include "serve/openai_batch.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace gale;
using namespace gale::serve;
using ojson = nlohmann::ordered_json;

namespace {

class OpenAiApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default").release();
    tmpl_ = new ChatTemplate(ChatTemplate::from_string(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"));
  }
  void SetUp() override {
    info_.name = "m";
    info_.max_model_len = 64;
    info_.vocab_size = int64_t(tok_->vocab_size());
  }
  // The message of the 400 a completions body gets; "" when it is accepted.
  std::string completion_error(const std::string& body) {
    try {
      parse_completion_request(parse_json_body(body), info_, tok_);
      return "";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << body;
      return e.what();
    }
  }
  std::string chat_error(const std::string& body) {
    try {
      parse_chat_request(parse_json_body(body), info_, tok_, tmpl_);
      return "";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << body;
      return e.what();
    }
  }
  static Tokenizer* tok_;
  static ChatTemplate* tmpl_;
  ModelInfo info_;
};
Tokenizer* OpenAiApi::tok_ = nullptr;
ChatTemplate* OpenAiApi::tmpl_ = nullptr;

std::string nested(int depth) { return std::string(size_t(depth), '[') + std::string(size_t(depth), ']'); }

TEST_F(OpenAiApi, JsonDepthIsBounded) {
  EXPECT_NO_THROW(parse_json_body(nested(kMaxJsonDepth)));
  EXPECT_NO_THROW(parse_json_body(nested(kMaxJsonDepth - 1).insert(kMaxJsonDepth - 1, R"({"a":1})")));
  try {
    parse_json_body(nested(kMaxJsonDepth + 1));
    FAIL() << "accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("nested deeper than 64"), std::string::npos) << e.what();
  }
  // 100k levels: refused at level 65 while parsing, nothing recurses over it.
  EXPECT_THROW(parse_json_body(R"({"prompt":"x","user":)" + nested(100000) + "}"), ApiError);
}

// A number past a double is nlohmann's out_of_range, not a parse_error: it escaped as a 500
// (and would have ended gale batch). Found by fuzz_openai_body.
TEST_F(OpenAiApi, NumberOverflowIsInvalidJson) {
  try {
    parse_json_body(R"({"prompt":"x","max_tokens":1e400})");
    FAIL() << "accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_batch_line(R"({"custom_id":"a","body":{"prompt":"x","max_tokens":1e400}})").error.find("invalid JSON in the line"),
            0u);
}

TEST_F(OpenAiApi, IntegersAreRangeCheckedBeforeConversion) {
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":4})"), "");
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":0.9})"), "'max_tokens' must be an integer");
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":9223372036854775808})"), "'max_tokens' is out of range");
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":18446744073709551616})"), "'max_tokens' must be an integer");
  EXPECT_EQ(completion_error(R"({"prompt":"x","top_k":1e20})"), "'top_k' must be an integer");
  EXPECT_EQ(completion_error(R"({"prompt":"x","top_k":2147483648})").find("'top_k' must be in"), 0u);
  EXPECT_EQ(completion_error(R"({"prompt":"x","n":1.5})"), "'n' must be an integer");
  EXPECT_EQ(completion_error(R"({"prompt":"x","logprobs":1e3})"), "'logprobs' must be an integer");
  EXPECT_EQ(completion_error(R"({"prompt":[788, 4294967301]})"), "token id 4294967301 is out of range [0, 8192)");
  EXPECT_EQ(completion_error(R"({"prompt":[788, 18446744073709551615]})").find("token id"), 0u);
  EXPECT_EQ(completion_error(R"({"prompt":[788, 1.5]})"), "'prompt' token ids must be integers");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":0.9})"),
            "'max_completion_tokens' must be an integer");
}

TEST_F(OpenAiApi, StopListAndStringsAreBounded) {
  ojson body = {{"prompt", "x"}, {"max_tokens", 2}, {"stop", ojson::array()}};
  for (size_t i = 0; i < kMaxStopSequences; ++i) body["stop"].push_back("s" + std::to_string(i));
  EXPECT_EQ(completion_error(body.dump()), "");
  body["stop"].push_back("one more");
  EXPECT_EQ(completion_error(body.dump()), "'stop' takes at most 16 sequences");
  body["stop"] = std::string(kMaxStopBytes, 'a');
  EXPECT_EQ(completion_error(body.dump()), "");
  body["stop"] = std::string(kMaxStopBytes + 1, 'a');
  EXPECT_EQ(completion_error(body.dump()), "'stop' sequences must be at most 1024 bytes");
  body["stop"] = ojson::array({"ok", std::string(kMaxStopBytes + 1, 'a')});
  EXPECT_EQ(completion_error(body.dump()), "'stop' sequences must be at most 1024 bytes");
}

// Fields of the wrong type inside objects were read with json::value(), which throws a json
// type_error (a 500, and a crash in gale batch) instead of a 400.
TEST_F(OpenAiApi, WrongTypesInsideObjectsAre400s) {
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"user","content":[{"type":7,"text":"x"}]}]})"),
            "only text content parts are supported");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]})"), "");
  EXPECT_EQ(completion_error(R"({"prompt":"x","response_format":{"type":1}})"),
            "'response_format' must be an object with a 'type'");
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":2,"response_format":{"type":"text"}})"), "");
}

// Structured output: response_format json_object / json_schema and the guided_* fields become
// the engine requests' constraint; a bad schema, regex or grammar, a wrong type or two at once is
// one 400 naming the field.
TEST_F(OpenAiApi, StructuredOutputFields) {
  auto constraint = [&](const std::string& body) {
    ApiRequest r = parse_chat_request(parse_json_body(body), info_, tok_, tmpl_);
    auto reqs = r.engine_requests();
    EXPECT_EQ(reqs.size(), size_t(r.n));
    for (auto& p : reqs) EXPECT_EQ(p.constraint.text, r.constraint.text);
    return reqs.front().constraint;
  };
  const std::string msg = R"("messages":[{"role":"user","content":"hi"}],"max_tokens":4)";
  ConstraintSpec c = constraint("{" + msg + R"(,"response_format":{"type":"json_object"}})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::JsonObject);
  c = constraint("{" + msg + R"(,"n":2,"response_format":{"type":"json_schema","json_schema":{"name":"p","strict":true,
      "schema":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}}}})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::JsonSchema);
  EXPECT_EQ(nlohmann::json::parse(c.text)["properties"]["a"]["type"], "integer");
  c = constraint("{" + msg + R"(,"guided_json":"{\"type\":\"string\"}"})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::JsonSchema);
  EXPECT_EQ(c.text, R"({"type":"string"})");
  c = constraint("{" + msg + R"(,"guided_regex":"[a-z]+@[a-z]+\\.com"})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::Regex);
  EXPECT_EQ(c.text, "[a-z]+@[a-z]+\\.com");
  c = constraint("{" + msg + R"(,"guided_choice":["yes","no"]})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::Choice);
  c = constraint("{" + msg + R"(,"guided_grammar":"root ::= \"a\" [0-9]+"})");
  EXPECT_EQ(c.kind, ConstraintSpec::Kind::Grammar);
  c = constraint("{" + msg + R"(,"response_format":{"type":"text"}})");
  EXPECT_FALSE(c.active());
  EXPECT_EQ(completion_error(R"({"prompt":"x","max_tokens":2,"guided_choice":["a"]})"), "");

  EXPECT_EQ(chat_error("{" + msg + R"(,"response_format":{"type":"xml"}})"),
            "'response_format' type must be text, json_object or json_schema");
  EXPECT_EQ(chat_error("{" + msg + R"(,"response_format":{"type":"json_schema"}})"),
            "'response_format' json_schema needs 'json_schema': {'name': ..., 'schema': {...}}");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_regex":"a(b"})"), "'guided_regex': regex: missing ')' at offset 3");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_json":{"type":"object","not":{}}})"),
            "'guided_json': json schema: keyword 'not' is not supported");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_json":"{bad"})").rfind("'guided_json': json schema: invalid JSON", 0), 0u);
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_grammar":"root ::= missing"})"),
            "'guided_grammar': grammar: rule 'missing' is used but not defined");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_choice":[]})"), "'guided_choice' must be a non-empty list of strings");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_choice":["a",1]})"), "'guided_choice' must be a non-empty list of strings");
  EXPECT_EQ(chat_error("{" + msg + R"(,"guided_json":7})"), "'guided_json' must be a JSON schema (an object or its text)");
  EXPECT_EQ(chat_error("{" + msg + R"(,"response_format":{"type":"json_object"},"guided_regex":"a"})"),
            "'guided_regex' cannot be combined with 'response_format'");
}

// "speculative" per request: "off" always works; the server's own proposer may be named; any other
// proposer, an unknown value or a non-string is one 400 naming the field.
// Every engine request the server or a batch builds stops on the model's eos ids (a server that
// dropped them ran every completion to max_tokens, and a grammar had no token to end with).
TEST_F(OpenAiApi, EngineRequestsCarryTheModelsEosIds) {
  info_.eos_ids = {2, 7};
  for (const auto& p : parse_completion_request(parse_json_body(R"({"model":"m","prompt":["a","b"],"n":2})"), info_, tok_)
                           .engine_requests())
    EXPECT_EQ(p.eos_ids, (std::vector<int32_t>{2, 7}));
  EXPECT_EQ(parse_chat_request(parse_json_body(R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"), info_,
                               tok_, tmpl_)
                .engine_requests()
                .front()
                .eos_ids,
            (std::vector<int32_t>{2, 7}));
  info_.check_model_name = false;
  BatchLine l = parse_batch_line(R"({"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"x"}})");
  EXPECT_EQ(batch_request(l, info_, tok_, tmpl_).params.eos_ids, (std::vector<int32_t>{2, 7}));
}

TEST_F(OpenAiApi, SpeculativePerRequest) {
  info_.speculative = "draft:models/draft";
  auto spec_of = [&](const std::string& body) {
    return parse_completion_request(parse_json_body(body), info_, tok_).engine_requests().front().speculative;
  };
  EXPECT_TRUE(spec_of(R"({"model":"m","prompt":"a"})"));
  EXPECT_FALSE(spec_of(R"({"model":"m","prompt":"a","speculative":"off"})"));
  EXPECT_TRUE(spec_of(R"({"model":"m","prompt":"a","speculative":"draft"})"));
  EXPECT_TRUE(spec_of(R"({"model":"m","prompt":"a","speculative":"draft:models/draft"})"));
  EXPECT_NE(completion_error(R"({"model":"m","prompt":"a","speculative":"ngram"})").find("not available"), std::string::npos);
  EXPECT_NE(completion_error(R"({"model":"m","prompt":"a","speculative":"eagle"})").find("speculative"), std::string::npos);
  EXPECT_NE(completion_error(R"({"model":"m","prompt":"a","speculative":4})").find("speculative"), std::string::npos);
  info_.speculative = "off";
  EXPECT_FALSE(spec_of(R"({"model":"m","prompt":"a","speculative":"off"})"));
  EXPECT_NE(completion_error(R"({"model":"m","prompt":"a","speculative":"draft"})"), "");
  EXPECT_NE(chat_error(R"({"model":"m","messages":[{"role":"user","content":"hi"}],"speculative":"suffix"})"), "");
}

TEST_F(OpenAiApi, BatchLinesUseTheServersRules) {
  info_.check_model_name = false;
  auto error_of = [&](const std::string& text) -> std::string {
    BatchLine l = parse_batch_line(text);
    if (!l.error.empty()) return "line: " + l.error;
    try {
      batch_request(l, info_, tok_, tmpl_);
      return "";
    } catch (const ApiError& e) {
      return e.what();
    }
  };
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"model":"gpt-4o","prompt":"x","max_tokens":2}})"), "");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":[788, 4294967301]}})"),
            "token id 4294967301 is out of range [0, 8192)");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":"x","max_tokens":0.9}})"), "'max_tokens' must be an integer");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":"x","top_k":1e20}})"), "'top_k' must be an integer");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":"x","max_tokens":9223372036854775808}})"),
            "'max_tokens' is out of range");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":"x","stop":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}})"),
            "'stop' takes at most 16 sequences");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":"x","n":2}})"), "only n = 1 is supported in a batch");
  EXPECT_EQ(error_of(R"({"custom_id":"a","body":{"prompt":["x","y"]}})"), "a batch request takes one prompt");
  EXPECT_EQ(error_of(R"({"custom_id":"a","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":)" +
                     nested(100000) + "}]}}"),
            "line: JSON nested deeper than 64 levels");
  EXPECT_EQ(error_of(R"({"custom_id":"a","url":7,"body":{"prompt":"x"}})"),
            "line: 'url' must be /v1/completions or /v1/chat/completions");
  EXPECT_EQ(error_of(R"({"custom_id":"","body":{"prompt":"x"}})"), "line: 'custom_id' (a non-empty string) is required");
  EXPECT_EQ(parse_batch_line(R"({"custom_id":"c","method":"GET","body":{}})").custom_id, "c");  // named in the errors file
}

TEST_F(OpenAiApi, BatchSeedComesFromTheCustomId) {
  BatchLine a = parse_batch_line(R"({"custom_id":"a","body":{"prompt":"x","max_tokens":2,"temperature":1}})");
  BatchLine b = parse_batch_line(R"({"custom_id":"b","body":{"prompt":"x","max_tokens":2,"temperature":1}})");
  BatchLine s = parse_batch_line(R"({"custom_id":"a","body":{"prompt":"x","max_tokens":2,"seed":5}})");
  EXPECT_EQ(batch_request(a, info_, tok_, tmpl_).params.sampling.seed,
            batch_request(a, info_, tok_, tmpl_).params.sampling.seed);
  EXPECT_NE(batch_request(a, info_, tok_, tmpl_).params.sampling.seed,
            batch_request(b, info_, tok_, tmpl_).params.sampling.seed);
  EXPECT_EQ(batch_request(s, info_, tok_, tmpl_).params.sampling.seed, 5u);
}

// Resume trusts only whole lines this format wrote: a result or a recorded error.
TEST_F(OpenAiApi, ResumeTrustsOnlyRecordedResults) {
  BatchLine l = parse_batch_line(R"({"custom_id":"r1","body":{"prompt":"x","max_tokens":2}})");
  BatchRequest r = batch_request(l, info_, tok_, tmpl_);
  ChoiceState c;
  c.text = "y";
  c.finish_reason = "length";
  RequestOutput fin;
  fin.finish_reason = "length";
  EXPECT_EQ(recorded_custom_id(json_text(batch_finished_line("r1", r.api, info_, tok_, c, fin))), "r1");
  EXPECT_EQ(recorded_custom_id(json_text(batch_error_line("r2", "invalid_request", "bad"))), "r2");
  // Not results: the request line itself, a bare custom_id, a torn result, other shapes.
  EXPECT_EQ(recorded_custom_id(R"({"custom_id":"r1","method":"POST","url":"/v1/completions","body":{"prompt":"x"}})"),
            std::nullopt);
  EXPECT_EQ(recorded_custom_id(R"({"custom_id":"r1"})"), std::nullopt);
  std::string whole = json_text(batch_error_line("r3", "invalid_request", "bad"));
  EXPECT_EQ(recorded_custom_id(whole.substr(0, whole.size() - 1)), std::nullopt);
  EXPECT_EQ(recorded_custom_id(R"({"id":"x","custom_id":"r1","response":{"status_code":500,"body":{"choices":[{}]}},"error":null})"),
            std::nullopt);
  EXPECT_EQ(recorded_custom_id(R"({"id":"x","custom_id":"r1","response":null,"error":null})"), std::nullopt);
  EXPECT_EQ(recorded_custom_id(R"({"id":"x","custom_id":"r1","response":null,"error":{"code":1,"message":"m"}})"),
            std::nullopt);
  EXPECT_EQ(recorded_custom_id(R"({"id":"x","custom_id":"r1","response":null,"error":)" + nested(100000) + "}"),
            std::nullopt);
}

// A request the engine fails (finish_reason "error", RequestOutput::error) is recorded as an error
// line, which resume then counts as done: it is not retried on every rerun.
TEST_F(OpenAiApi, EngineFailureIsARecordedError) {
  BatchLine l = parse_batch_line(R"({"custom_id":"f","body":{"prompt":"x","max_tokens":2}})");
  BatchRequest r = batch_request(l, info_, tok_, tmpl_);
  ChoiceState c;
  RequestOutput fin;
  fin.finished = true;
  fin.finish_reason = "error";
  fin.error = "the step failed: out of memory";
  ojson line = batch_finished_line("f", r.api, info_, tok_, c, fin);
  EXPECT_TRUE(line["response"].is_null()) << line.dump();
  EXPECT_EQ(line["error"]["code"], "server_error");
  EXPECT_EQ(line["error"]["message"], "the step failed: out of memory");
  EXPECT_EQ(recorded_custom_id(json_text(line)), "f");
}

// ---- tools and reasoning (serve/chat_tools.h)

// OpenAI clients send a call's arguments as a JSON string; the server hands the templates the
// object, as vLLM does. Rendered through parse_chat_request, every committed transformers
// rendering (tests/fixtures/chat_templates/cases.json, apply_chat_template with the arguments as
// dicts) of the tool-using models must come out byte for byte.
TEST_F(OpenAiApi, ToolConversationsRenderAsTransformers) {
  const std::string dir = std::string(GALE_SOURCE_DIR) + "/tests/fixtures/chat_templates";
  std::ifstream f(dir + "/cases.json");
  ojson all = ojson::parse(f);
  info_.max_model_len = 1 << 20;
  int checked = 0;
  for (auto& c : all["cases"]) {
    const std::string model = c["model"];
    if (model != "qwen2.5" && model != "qwen3" && model != "llama3.2" && model != "mistral-v0.3") continue;
    if (!c.contains("expected")) continue;
    const ojson& conv = all["conversations"][c["conversation"].get<std::string>()];
    if (!conv.contains("tools")) continue;
    bool dict_args = false, plain = true;
    ojson msgs = conv["messages"];
    for (auto& m : msgs) {
      if (!m["content"].is_string() && !m["content"].is_null()) plain = false;
      if (!m.contains("tool_calls")) continue;
      for (auto& tc : m["tool_calls"]) {
        auto& a = tc["function"]["arguments"];
        if (!a.is_object()) plain = false;  // the reference rendered a string: not the OpenAI form
        dict_args = true;
        a = a.dump();                       // what an OpenAI client sends
      }
    }
    bool other_kwargs = false;
    for (auto it = c["kwargs"].begin(); it != c["kwargs"].end(); ++it) other_kwargs |= it.key() != "date_string";
    if (!dict_args || !plain || other_kwargs) continue;
    ChatTemplate tmpl = ChatTemplate::load(dir + "/" + model);
    ojson body = {{"messages", msgs}, {"tools", conv["tools"]}, {"add_generation_prompt", c["add_generation_prompt"]},
                  {"chat_template_kwargs", c["kwargs"]}};
    ApiRequest r = parse_chat_request(body, info_, tok_, &tmpl);
    EXPECT_EQ(r.prompt_texts[0], c["expected"].get<std::string>()) << model << " " << c["conversation"];
    ++checked;
  }
  EXPECT_GE(checked, 12);  // 4 models x (tools, tools_no_system, parallel_tool_calls, ...) x add_generation_prompt
}

TEST_F(OpenAiApi, ToolsAndToolChoiceAreValidated) {
  info_.tool_format = ToolCallFormat::Hermes;
  const std::string m = R"("messages":[{"role":"user","content":"hi"}])";
  const std::string t = R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}])";
  auto param_of = [&](const std::string& body) -> std::string {
    try {
      parse_chat_request(parse_json_body(body), info_, tok_, tmpl_);
      return "";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << body;
      return e.param;
    }
  };
  EXPECT_EQ(param_of("{" + m + "," + t + "}"), "");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":"required","parallel_tool_calls":false})"), "");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":{"type":"function","function":{"name":"get_weather"}}})"), "");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":{}})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":[]})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":[{"type":"function"}]})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":[{"type":"code","function":{"name":"f"}}]})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":[{"type":"function","function":{"name":"has space"}}]})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]})"), "tools");
  EXPECT_EQ(param_of("{" + m + R"(,"tool_choice":"required"})"), "tool_choice");
  EXPECT_EQ(param_of("{" + m + R"(,"tool_choice":"none"})"), "");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":"any"})"), "tool_choice");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":{"type":"function","function":{"name":"other"}}})"), "tool_choice");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":{"type":"function"}})"), "tool_choice");
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"parallel_tool_calls":"yes"})"), "parallel_tool_calls");
  EXPECT_EQ(param_of(R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":{}}]})"), "messages");
  EXPECT_EQ(param_of(R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"function":{}}]}]})"), "messages");
  EXPECT_EQ(param_of(R"({"messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":5,"content":"r"}]})"), "messages");
  // required / named need a known format.
  info_.tool_format = ToolCallFormat::None;
  EXPECT_EQ(param_of("{" + m + "," + t + R"(,"tool_choice":"required"})"), "tool_choice");
  EXPECT_EQ(param_of("{" + m + "," + t + "}"), "");
}

TEST_F(OpenAiApi, ParsingFollowsToolChoiceAndThinking) {
  info_.tool_format = ToolCallFormat::Mistral;
  info_.reasoning_format = ReasoningFormat::Qwen3;
  const std::string m = R"("messages":[{"role":"user","content":"hi"}])";
  const std::string t = R"("tools":[{"type":"function","function":{"name":"f"}}])";
  auto parsing = [&](const std::string& body) { return parse_chat_request(parse_json_body(body), info_, tok_, tmpl_); };
  ApiRequest a = parsing("{" + m + "," + t + "}");
  EXPECT_EQ(a.parsing.tool_format, ToolCallFormat::Mistral);
  EXPECT_EQ(a.parsing.reasoning, ReasoningFormat::Qwen3);
  EXPECT_FALSE(a.engine_requests()[0].skip_special_tokens);  // [TOOL_CALLS] is a special token
  EXPECT_TRUE(a.parsing.tool_grammar.empty());
  ApiRequest none = parsing("{" + m + "," + t + R"(,"tool_choice":"none","chat_template_kwargs":{"enable_thinking":false}})");
  EXPECT_EQ(none.parsing.tool_format, ToolCallFormat::None);
  EXPECT_EQ(none.parsing.reasoning, ReasoningFormat::None);
  EXPECT_TRUE(none.engine_requests()[0].skip_special_tokens);
  ApiRequest req = parsing("{" + m + "," + t + R"(,"tool_choice":"required"})");
  EXPECT_NE(req.parsing.tool_grammar.find("[TOOL_CALLS]"), std::string::npos);
  ApiRequest plain = parsing("{" + m + "}");
  EXPECT_EQ(plain.parsing.tool_format, ToolCallFormat::None);
}

// tool_choice required / named is enforced: the request carries the tool grammar as its
// constraint, which the grammar engine compiles, and it admits the calls the tools' schemas allow
// (arguments through json_schema_to_gbnf) and nothing else; with response_format it is a 400.
TEST_F(OpenAiApi, ToolChoiceRequiredIsAConstraint) {
  info_.tool_format = ToolCallFormat::Hermes;
  const std::string m = R"("messages":[{"role":"user","content":"hi"}])";
  const std::string t = R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
    "properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}])";
  auto chat = [&](const std::string& body) { return parse_chat_request(parse_json_body(body), info_, tok_, tmpl_); };
  const ApiRequest req = chat("{" + m + "," + t + R"(,"tool_choice":"required"})");
  const RequestParams p = req.engine_requests()[0];
  ASSERT_EQ(p.constraint.kind, ConstraintSpec::Kind::Grammar);
  EXPECT_EQ(p.constraint.text, req.parsing.tool_grammar);
  EXPECT_FALSE(chat("{" + m + "," + t + "}").engine_requests()[0].constraint.active());  // auto: free text
  // The grammar engine over a vocabulary of single bytes.
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, char(b)));
  GrammarCompiler compiler(std::make_shared<const TokenTable>(std::move(bytes), std::vector<int32_t>{}));
  const auto grammar = compiler.compile(p.constraint);
  auto allows = [&](const std::string& text) {
    GrammarMatcher mt(grammar);
    return mt.accept_bytes(text) && mt.can_terminate();
  };
  const std::string call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ";
  EXPECT_TRUE(allows(call + "{\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_FALSE(allows(call + "{\"city\": 5}}\n</tool_call>"));      // the schema's type
  EXPECT_FALSE(allows(call + "{\"town\": \"Paris\"}}\n</tool_call>"));  // no other keys
  EXPECT_FALSE(allows("Sure. " + call + "{\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_FALSE(allows(""));
  // A constraint of its own besides: refused, naming tool_choice.
  try {
    chat("{" + m + "," + t + R"(,"tool_choice":"required","response_format":{"type":"json_object"}})");
    ADD_FAILURE() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tool_choice");
  }
}

TEST_F(OpenAiApi, FullResponseSplitsToolCallsAndReasoning) {
  info_.tool_format = ToolCallFormat::Hermes;
  info_.reasoning_format = ReasoningFormat::Qwen3;
  ApiRequest r = parse_chat_request(
      parse_json_body(R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]})"),
      info_, tok_, tmpl_);
  ResponseBuilder rb(r, info_, tok_, "chatcmpl-x");
  ChoiceState c;
  c.text = "<think>\nplan\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, \"b\"]}}\n</tool_call>";
  c.finish_reason = "stop";
  ojson msg = rb.full_response({c})["choices"][0];
  EXPECT_EQ(msg["finish_reason"], "tool_calls");
  EXPECT_TRUE(msg["message"]["content"].is_null());
  EXPECT_EQ(msg["message"]["reasoning_content"], "\nplan\n");
  ASSERT_EQ(msg["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(msg["message"]["tool_calls"][0]["type"], "function");
  EXPECT_EQ(msg["message"]["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(ojson::parse(msg["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            ojson::parse(R"({"a": [1, "b"]})"));
  // No calls: content as written, reasoning null when there was none.
  c.text = "Just text.";
  msg = rb.full_response({c})["choices"][0];
  EXPECT_EQ(msg["finish_reason"], "stop");
  EXPECT_EQ(msg["message"]["content"], "Just text.");
  EXPECT_TRUE(msg["message"]["reasoning_content"].is_null());
  EXPECT_FALSE(msg["message"].contains("tool_calls"));
}

}  // namespace
