// The OpenAI batch format of `gale batch`: one request per input line
// ({"custom_id", "method", "url", "body"}), one result per output line
// ({"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}), or a recorded
// error ({..., "response": null, "error": {"code", "message"}}). The bodies go through the
// server's own parser and validator (openai_api.h): one set of rules for both front ends.
// No files here: cli/cmd_batch.cpp reads and appends the lines.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "serve/openai_api.h"

namespace gale::serve {

// One input line, its envelope checked; the body is checked by batch_request().
struct BatchLine {
  std::string custom_id;  // "" where the line has none
  Endpoint endpoint = Endpoint::Completions;
  nlohmann::ordered_json body;
  std::string error;      // why the line is not a request (the errors file's message); "" = it is
};

// Never throws: invalid JSON, nesting deeper than kMaxJsonDepth, or a missing / wrong
// custom_id, method, url or body come back in `error`.
BatchLine parse_batch_line(std::string_view text);

// A validated batch request: the server's parse plus batch's own rules (one prompt, n = 1, no
// echo; streaming is meaningless offline and ignored). Without a seed in the body the seed is
// derived from the custom_id, so a resumed job samples as a clean run would.
struct BatchRequest {
  ApiRequest api;
  RequestParams params;  // the one engine request
};
BatchRequest batch_request(const BatchLine& line, const ModelInfo& info, const Tokenizer* tok,
                           const ChatTemplate* tmpl);

// Output lines. Ids are derived from the custom_id, so a rerun writes the same ids.
nlohmann::ordered_json batch_result_line(const std::string& custom_id, const ApiRequest& req, const ModelInfo& info,
                                         const Tokenizer* tok, const ChoiceState& choice);
nlohmann::ordered_json batch_error_line(const std::string& custom_id, const std::string& code,
                                        const std::string& message);
// A finished engine request: its result, or a recorded error when the engine failed it
// (finish_reason "error"), so that a failing request is recorded once and never retried.
nlohmann::ordered_json batch_finished_line(const std::string& custom_id, const ApiRequest& req, const ModelInfo& info,
                                           const Tokenizer* tok, const ChoiceState& choice, const RequestOutput& fin);

// The custom_id of an output line that this format wrote whole (a result or a recorded error);
// nullopt for anything else (a torn line, a request line, other JSON), which resume must not trust.
std::optional<std::string> recorded_custom_id(std::string_view line);

}  // namespace gale::serve
