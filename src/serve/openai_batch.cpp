#include "serve/openai_batch.h"

#include <cstdio>

namespace gale::serve {

using ojson = nlohmann::ordered_json;

namespace {

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ uint8_t(c)) * 1099511628211ull;
  return h;
}

std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}

std::string line_id(const std::string& custom_id) { return "batch_req_" + hex(fnv1a("r" + custom_id)); }

}  // namespace

BatchLine parse_batch_line(std::string_view text) {
  BatchLine line;
  auto fail = [&](std::string msg) {
    line.error = std::move(msg);
    return line;
  };
  ojson j;
  try {
    j = parse_json_body(text, "the line");
  } catch (const ApiError& e) {
    return fail(e.what());
  }
  if (!j.is_object()) return fail("not a JSON object");
  auto cid = j.find("custom_id");
  if (cid == j.end() || !cid->is_string() || cid->get_ref<const std::string&>().empty())
    return fail("'custom_id' (a non-empty string) is required");
  line.custom_id = cid->get<std::string>();
  if (auto m = j.find("method"); m != j.end() && *m != "POST") return fail("'method' must be POST");
  auto body = j.find("body");
  if (body == j.end() || !body->is_object()) return fail("'body' (an object) is required");
  // Without a url the body says which endpoint it is for.
  std::string url = body->contains("messages") ? "/v1/chat/completions" : "/v1/completions";
  if (auto u = j.find("url"); u != j.end()) url = u->is_string() ? u->get<std::string>() : "";
  if (url != "/v1/completions" && url != "/v1/chat/completions")
    return fail("'url' must be /v1/completions or /v1/chat/completions");
  line.endpoint = url == "/v1/chat/completions" ? Endpoint::Chat : Endpoint::Completions;
  line.body = std::move(*body);
  return line;
}

BatchRequest batch_request(const BatchLine& line, const ModelInfo& info, const Tokenizer* tok,
                           const ChatTemplate* tmpl) {
  BatchRequest r;
  r.api = line.endpoint == Endpoint::Chat ? parse_chat_request(line.body, info, tok, tmpl)
                                          : parse_completion_request(line.body, info, tok);
  // One result line holds one choice of one prompt.
  if (r.api.prompts.size() != 1) throw ApiError(400, "a batch request takes one prompt", "prompt");
  if (r.api.n != 1) throw ApiError(400, "only n = 1 is supported in a batch", "n");
  if (r.api.echo) throw ApiError(400, "'echo' is not supported in a batch", "echo");
  r.api.stream = false;
  r.api.include_usage = false;
  if (!r.api.seed_given) r.api.sampling.seed = fnv1a(line.custom_id);
  r.params = std::move(r.api.engine_requests().front());
  return r;
}

ojson batch_result_line(const std::string& custom_id, const ApiRequest& req, const ModelInfo& info,
                        const Tokenizer* tok, const ChoiceState& choice) {
  const std::string id = (req.endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + hex(fnv1a(custom_id));
  ResponseBuilder rb(req, info, tok, id);
  return {{"id", line_id(custom_id)},
          {"custom_id", custom_id},
          {"response", {{"status_code", 200}, {"request_id", "req_" + hex(fnv1a(custom_id))},
                        {"body", rb.full_response({choice})}}},
          {"error", nullptr}};
}

ojson batch_error_line(const std::string& custom_id, const std::string& code, const std::string& message) {
  return {{"id", line_id(custom_id)},
          {"custom_id", custom_id},
          {"response", nullptr},
          {"error", {{"code", code}, {"message", message}}}};
}

ojson batch_finished_line(const std::string& custom_id, const ApiRequest& req, const ModelInfo& info,
                          const Tokenizer* tok, const ChoiceState& choice, const RequestOutput& fin) {
  if (fin.finish_reason == "error")
    return batch_error_line(custom_id, "server_error", fin.error.empty() ? "the engine failed the request" : fin.error);
  return batch_result_line(custom_id, req, info, tok, choice);
}

std::optional<std::string> recorded_custom_id(std::string_view text) {
  ojson j;
  try {
    j = parse_json_body(text);
  } catch (const ApiError&) {
    return std::nullopt;
  }
  if (!j.is_object()) return std::nullopt;
  auto id = j.find("id"), cid = j.find("custom_id"), resp = j.find("response"), err = j.find("error");
  if (id == j.end() || cid == j.end() || resp == j.end() || err == j.end()) return std::nullopt;
  if (!id->is_string() || !cid->is_string() || cid->get_ref<const std::string&>().empty()) return std::nullopt;
  if (resp->is_object() && err->is_null()) {  // a result
    auto status = resp->find("status_code"), body = resp->find("body");
    if (status == resp->end() || !status->is_number_integer() || *status != 200) return std::nullopt;
    if (body == resp->end() || !body->is_object()) return std::nullopt;
    auto choices = body->find("choices");
    if (choices == body->end() || !choices->is_array() || choices->empty()) return std::nullopt;
  } else if (resp->is_null() && err->is_object()) {  // a recorded error
    auto code = err->find("code"), msg = err->find("message");
    if (code == err->end() || !code->is_string() || msg == err->end() || !msg->is_string()) return std::nullopt;
  } else {
    return std::nullopt;
  }
  return cid->get<std::string>();
}

}  // namespace gale::serve
