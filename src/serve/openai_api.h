// OpenAI API requests and responses: JSON in, engine requests out; engine outputs in, JSON out.
// No networking here: the HTTP layer (http_server.cpp) calls these and sends what they return.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "serve/chat_tools.h"

namespace gale {
class Tokenizer;
class ChatTemplate;
}  // namespace gale

namespace gale::serve {

// An error answered as {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "", std::string code = "", std::string type = "")
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)),
        type(type.empty() ? default_type(status) : std::move(type)) {}
  int status;
  std::string param, code, type;
  static std::string default_type(int status);
};

std::string error_body(const ApiError& e);

// Nesting allowed in a request body (and in a `gale batch` line): deeper input is refused while
// it is parsed, so nothing downstream (dump, the chat template, copies) recurses past it.
constexpr int kMaxJsonDepth = 64;
// Limits on what one body may ask for; each one is per request.
constexpr size_t kMaxStopSequences = 16;
constexpr size_t kMaxStopBytes = 1024;  // the engine matches every stop string against new text each step

// A request body as JSON; ApiError 400 for invalid JSON or nesting deeper than kMaxJsonDepth.
// `what` names the text in the message ("invalid JSON in the request body: ...").
nlohmann::ordered_json parse_json_body(std::string_view text, std::string_view what = "the request body");

// What the server knows about the model it serves.
struct ModelInfo {
  std::string name;                 // served model name (the `model` field must match it)
  int64_t max_model_len = 0;        // prompt + completion tokens
  int64_t vocab_size = 0;
  SamplingParams defaults;          // from generation_config.json, else OpenAI's (temperature 1)
  int64_t created = 0;              // unix time the server started
  // gale batch: a batch body names the model it was written for, whatever runs it; the server
  // answers 404 for a name it does not serve.
  bool check_model_name = true;
  // Speculative decoding as the server runs it: "off", "draft:DIR", "ngram" or "suffix". A
  // request's "speculative" may say "off" or repeat this (or "draft" for any draft); another
  // proposer is a 400 (one engine holds one proposer).
  std::string speculative = "off";
  // The ids that end a completion (generation_config.json's eos_token_id, else the config's):
  // every request the server or a batch builds stops on them unless it sets ignore_eos, and a
  // grammar allows them where it is complete.
  std::vector<int32_t> eos_ids;
  // Chat output parsing (--tool-call-parser / --reasoning-parser, else detected from the chat
  // template): the format tool calls are parsed in when a request has tools, and reasoning's.
  ToolCallFormat tool_format = ToolCallFormat::None;
  ReasoningFormat reasoning_format = ReasoningFormat::None;
};

enum class Endpoint { Completions, Chat };

struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::vector<std::vector<int32_t>> prompts;  // completions: one per prompt; chat: one
  std::vector<std::string> prompt_texts;      // text of each prompt (echo)
  int n = 1;
  std::vector<int64_t> max_tokens;            // per prompt (the default depends on its length)
  SamplingParams sampling;
  bool seed_given = false;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  std::vector<int32_t> eos_ids;  // the model's (ModelInfo::eos_ids)
  int logprobs = -1;                          // -1: none; k >= 0: chosen token + top k
  bool echo = false;
  bool stream = false;
  bool include_usage = false;
  bool speculative = true;                    // false: "speculative": "off"
  ChatParsing parsing;                        // chat: tool calls / reasoning parsed from the output
  ConstraintSpec constraint;                  // response_format json_object/json_schema, guided_*
  // The engine requests: prompt i, sample j at index i * n + j (OpenAI's choice order).
  std::vector<RequestParams> engine_requests() const;
};

// Throw ApiError (400 for bad fields, 404 for an unknown model) naming the parameter.
ApiRequest parse_completion_request(const nlohmann::ordered_json& body, const ModelInfo& info, const Tokenizer* tok);
ApiRequest parse_chat_request(const nlohmann::ordered_json& body, const ModelInfo& info, const Tokenizer* tok,
                              const ChatTemplate* tmpl);

// Everything one choice produced so far.
struct ChoiceState {
  std::string text;
  std::vector<int32_t> ids;
  std::vector<TokenLogprob> logprobs;
  std::string finish_reason;  // "" while running
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  bool finished = false;
};

// Builds responses and stream chunks for one HTTP request.
class ResponseBuilder {
 public:
  // id: the response id; empty = a random one (gale batch derives its ids from the custom_id).
  ResponseBuilder(const ApiRequest& req, const ModelInfo& info, const Tokenizer* tok, std::string id = "");
  const std::string& id() const { return id_; }

  nlohmann::ordered_json full_response(const std::vector<ChoiceState>& choices) const;
  // One chunk for choice `index` carrying new text/logprobs (and finish_reason when done).
  nlohmann::ordered_json chunk(int index, const std::string& text, const std::vector<TokenLogprob>& lps,
                               const std::vector<int32_t>& ids, const std::string& finish_reason,
                               int64_t text_offset) const;
  nlohmann::ordered_json chat_role_chunk(int index) const;
  nlohmann::ordered_json usage_chunk(const std::vector<ChoiceState>& choices) const;
  nlohmann::ordered_json usage(const std::vector<ChoiceState>& choices) const;

  // Chat requests whose output is parsed (tools, reasoning: req.parsing.active()) stream through
  // this instead of chunk(): the new text of choice `index` through its parsers, as zero or more
  // chunks (content, reasoning_content and tool_calls deltas); with finish_reason, what was held
  // back and the final chunk ("tool_calls" when calls were made). Logprobs ride on the next chunk.
  bool parses_output() const { return req_.endpoint == Endpoint::Chat && req_.parsing.active(); }
  std::vector<nlohmann::ordered_json> parsed_chunks(int index, const std::string& text,
                                                    const std::vector<TokenLogprob>& lps,
                                                    const std::string& finish_reason);

 private:
  nlohmann::ordered_json completion_logprobs(const std::vector<int32_t>& ids, const std::vector<TokenLogprob>& lps,
                                             int64_t text_offset) const;
  nlohmann::ordered_json chat_logprobs(const std::vector<TokenLogprob>& lps) const;
  std::string token_text(int32_t id) const;

  const ApiRequest& req_;
  const ModelInfo& info_;
  const Tokenizer* tok_;
  std::string id_;
  int64_t created_;
  struct StreamParse {  // one per choice, made on its first piece
    std::unique_ptr<ChatOutputParser> parser;
    std::vector<TokenLogprob> pending_lps;
  };
  std::vector<StreamParse> parse_;
  nlohmann::ordered_json delta_chunk(int index, nlohmann::ordered_json delta, std::vector<TokenLogprob>& lps,
                                     const std::string& finish_reason) const;
};

// "data: <json>\n\n"
std::string sse_event(const nlohmann::ordered_json& j);
std::string json_text(const nlohmann::ordered_json& j);  // invalid UTF-8 replaced, never throws

// /tokenize and /detokenize bodies.
nlohmann::ordered_json tokenize(const nlohmann::ordered_json& body, const ModelInfo& info, const Tokenizer* tok,
                                const ChatTemplate* tmpl);
nlohmann::ordered_json detokenize(const nlohmann::ordered_json& body, const ModelInfo& info, const Tokenizer* tok);
nlohmann::ordered_json models_list(const ModelInfo& info);

// Constant-time check of an "Authorization: Bearer KEY" header value against the key.
bool bearer_matches(std::string_view header, std::string_view key);

std::string random_id(const char* prefix);

}  // namespace gale::serve
