#include "serve/openai_api.h"

#include <chrono>
#include <cmath>
#include <random>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale::serve {

using json = nlohmann::ordered_json;
using ojson = nlohmann::ordered_json;

std::string ApiError::default_type(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 408: return "timeout_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string json_text(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string error_body(const ApiError& e) {
  ojson err = {{"message", e.what()}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return json_text(ojson{{"error", err}});
}

ojson parse_json_body(std::string_view text, std::string_view what) {
  // `depth` counts the containers already open when a new one starts: 0 for the outermost.
  ojson::parser_callback_t cb = [](int depth, ojson::parse_event_t event, ojson&) {
    const bool opens = event == ojson::parse_event_t::object_start || event == ojson::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth)
      throw ApiError(400, "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return ojson::parse(text, cb);
  } catch (const ojson::exception& e) {  // parse_error, and out_of_range for numbers past a double (1e400)
    throw ApiError(400, "invalid JSON in " + std::string(what) + ": " + e.what());
  }
}

std::string sse_event(const ojson& j) { return "data: " + json_text(j) + "\n\n"; }

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[rng() & 15];
  return s;
}

bool bearer_matches(std::string_view header, std::string_view key) {
  std::string_view tok;
  if (header.size() >= 7 && (header.substr(0, 7) == "Bearer " || header.substr(0, 7) == "bearer ")) tok = header.substr(7);
  // Every byte of the key is compared whatever the input; only the key's length is observable.
  unsigned diff = tok.size() == key.size() ? 0u : 1u;
  for (size_t i = 0; i < key.size(); ++i) {
    unsigned char a = i < tok.size() ? (unsigned char)tok[i] : 0;
    diff |= a ^ (unsigned char)key[i];
  }
  return key.empty() ? false : diff == 0;
}

namespace {

// ---- field readers: null counts as absent; wrong types and ranges are 400s naming the field

const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> opt_number(const json& body, const char* key, double lo, double hi, bool lo_open = false) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw ApiError(400, std::string("'") + key + "' must be a number", key);
  double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
    throw ApiError(400, std::string("'") + key + "' must be in " + (lo_open ? "(" : "[") + std::to_string(lo) + ", " +
                            std::to_string(hi) + "], got " + v->dump(), key);
  return d;
}

std::optional<int64_t> opt_int(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw ApiError(400, std::string("'") + key + "' must be an integer", key);
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
    throw ApiError(400, std::string("'") + key + "' is out of range", key);
  int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    throw ApiError(400, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                            "], got " + std::to_string(x), key);
  return x;
}

std::optional<bool> opt_bool(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw ApiError(400, std::string("'") + key + "' must be a boolean", key);
  return v->get<bool>();
}

std::optional<std::string> opt_string(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw ApiError(400, std::string("'") + key + "' must be a string", key);
  return v->get<std::string>();
}

void check_model(const json& body, const ModelInfo& info) {
  auto m = opt_string(body, "model");
  if (m && info.check_model_name && *m != info.name)
    throw ApiError(404, "The model `" + *m + "` does not exist.", "model", "model_not_found", "invalid_request_error");
}

std::vector<int32_t> token_list(const json& a, const ModelInfo& info, const char* param) {
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (auto& x : a) {
    if (!x.is_number_integer()) throw ApiError(400, std::string("'") + param + "' token ids must be integers", param);
    int64_t v = x.is_number_unsigned() ? int64_t(std::min<uint64_t>(x.get<uint64_t>(), uint64_t(INT64_MAX))) : x.get<int64_t>();
    if (v < 0 || v >= info.vocab_size)
      throw ApiError(400, "token id " + std::to_string(v) + " is out of range [0, " + std::to_string(info.vocab_size) + ")", param);
    ids.push_back(int32_t(v));
  }
  return ids;
}

// Structured output (issue 22): response_format json_object / json_schema and vLLM's guided_json,
// guided_regex, guided_choice and guided_grammar, at most one of them. The constraint is compiled
// to a grammar here once, so that a bad schema, regex or grammar is a 400 naming the field (the
// engine compiles it again against the vocabulary, from its cache when the text repeats).
void parse_constraint(const json& body, ApiRequest& r) {
  ConstraintSpec c;
  const char* param = nullptr;
  auto set = [&](ConstraintSpec::Kind k, std::string text, const char* name) {
    if (c.active())
      throw ApiError(400, std::string("'") + name + "' cannot be combined with '" + param + "'", name);
    c = {k, std::move(text)};
    param = name;
  };
  if (const json* rf = field(body, "response_format")) {
    const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
    if (!rf->is_object() || !type || !type->is_string())
      throw ApiError(400, "'response_format' must be an object with a 'type'", "response_format");
    const std::string t = type->get<std::string>();
    if (t == "json_object") {
      set(ConstraintSpec::Kind::JsonObject, "", "response_format");
    } else if (t == "json_schema") {
      const json* js = field(*rf, "json_schema");
      const json* schema = js && js->is_object() ? field(*js, "schema") : nullptr;
      if (!schema || !(schema->is_object() || schema->is_boolean()))
        throw ApiError(400, "'response_format' json_schema needs 'json_schema': {'name': ..., 'schema': {...}}",
                       "response_format");
      set(ConstraintSpec::Kind::JsonSchema, schema->dump(), "response_format");
    } else if (t != "text") {
      throw ApiError(400, "'response_format' type must be text, json_object or json_schema", "response_format");
    }
  }
  if (const json* v = field(body, "guided_json")) {
    if (v->is_string()) set(ConstraintSpec::Kind::JsonSchema, v->get<std::string>(), "guided_json");
    else if (v->is_object()) set(ConstraintSpec::Kind::JsonSchema, v->dump(), "guided_json");
    else throw ApiError(400, "'guided_json' must be a JSON schema (an object or its text)", "guided_json");
  }
  if (auto v = opt_string(body, "guided_regex")) set(ConstraintSpec::Kind::Regex, *v, "guided_regex");
  if (const json* v = field(body, "guided_choice")) {
    bool ok = v->is_array() && !v->empty();
    if (ok)
      for (auto& x : *v) ok = ok && x.is_string();
    if (!ok) throw ApiError(400, "'guided_choice' must be a non-empty list of strings", "guided_choice");
    set(ConstraintSpec::Kind::Choice, v->dump(), "guided_choice");
  }
  if (auto v = opt_string(body, "guided_grammar")) set(ConstraintSpec::Kind::Grammar, *v, "guided_grammar");
  if (!c.active()) return;
  try {
    parse_gbnf(constraint_to_gbnf(c));
  } catch (const Error& e) {
    throw ApiError(400, std::string("'") + param + "': " + e.what(), param);
  }
  r.constraint = std::move(c);
}

// Sampling, stop, n, seed, ignore_eos: shared by both endpoints.
void parse_common(const json& body, const ModelInfo& info, ApiRequest& r) {
  SamplingParams& s = r.sampling;
  s = info.defaults;
  r.eos_ids = info.eos_ids;
  if (auto v = opt_number(body, "temperature", 0, 2)) s.temperature = float(*v);
  if (auto v = opt_number(body, "top_p", 0, 1, /*lo_open=*/true)) s.top_p = float(*v);
  if (auto v = opt_int(body, "top_k", -1, 1 << 30)) s.top_k = *v < 0 ? 0 : int(*v);
  if (auto v = opt_number(body, "min_p", 0, 1)) s.min_p = float(*v);
  if (auto v = opt_number(body, "presence_penalty", -2, 2)) s.presence_penalty = float(*v);
  if (auto v = opt_number(body, "frequency_penalty", -2, 2)) s.frequency_penalty = float(*v);
  if (auto v = opt_number(body, "repetition_penalty", 0, 10, /*lo_open=*/true)) s.repetition_penalty = float(*v);
  if (const json* v = field(body, "seed")) {
    if (!v->is_number_integer()) throw ApiError(400, "'seed' must be an integer", "seed");
    s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
    r.seed_given = true;
  } else {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    s.seed = rng();
  }
  if (auto v = opt_int(body, "n", 1, 128)) r.n = int(*v);
  if (auto v = opt_int(body, "best_of", 1, 128); v && *v != r.n)
    throw ApiError(400, "'best_of' different from 'n' is not supported", "best_of");
  if (auto v = opt_bool(body, "ignore_eos")) r.ignore_eos = *v;
  if (const json* v = field(body, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > kMaxStopSequences)
        throw ApiError(400, "'stop' takes at most " + std::to_string(kMaxStopSequences) + " sequences", "stop");
      for (auto& x : *v) {
        if (!x.is_string()) throw ApiError(400, "'stop' must be a string or a list of strings", "stop");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      throw ApiError(400, "'stop' must be a string or a list of strings", "stop");
    }
    for (auto& x : r.stop) {
      if (x.empty()) throw ApiError(400, "'stop' sequences must not be empty", "stop");
      if (x.size() > kMaxStopBytes)
        throw ApiError(400, "'stop' sequences must be at most " + std::to_string(kMaxStopBytes) + " bytes", "stop");
    }
  }
  if (const json* v = field(body, "speculative")) {
    if (!v->is_string())
      throw ApiError(400, "'speculative' must be a string: off, draft:DIR, ngram or suffix", "speculative");
    const std::string s = v->get<std::string>();
    const std::string& served = info.speculative;
    const bool known = s == "off" || s == "ngram" || s == "suffix" || s == "draft" || s.rfind("draft:", 0) == 0;
    if (!known)
      throw ApiError(400, "'speculative' must be off, draft:DIR, ngram or suffix (got '" + s + "')", "speculative");
    const bool same = s == served || (s == "draft" && served.rfind("draft:", 0) == 0);
    if (s != "off" && !same)
      throw ApiError(400, "'speculative' " + s + " is not available here: this server runs " + served +
                              " (a request may ask for \"off\" or for that)", "speculative");
    r.speculative = s != "off";
  } else if (r.seed_given && r.sampling.temperature > 0) {
    // A seed promises the same samples on a rerun. With speculation a sampled request's draws
    // depend on how many tokens each step proposed, which the auto controller picks from measured
    // step times, so a seeded sampled request does not speculate unless it asks to.
    r.speculative = false;
  }
  if (auto v = opt_string(body, "user")) (void)v;
  r.stream = opt_bool(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw ApiError(400, "'stream_options' must be an object", "stream_options");
    if (!r.stream) throw ApiError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options");
    r.include_usage = opt_bool(*so, "include_usage").value_or(false);
  }
  if (const json* lb = field(body, "logit_bias"); lb && !(lb->is_object() && lb->empty()))
    throw ApiError(400, "'logit_bias' is not supported", "logit_bias");
  parse_constraint(body, r);
}

// max_tokens against the context: the prompt must leave room for at least one token.
void set_max_tokens(const json& body, const ModelInfo& info, ApiRequest& r, std::optional<int64_t> asked,
                    int64_t dflt, const char* param) {
  for (auto& p : r.prompts) {
    const int64_t len = int64_t(p.size());
    if (len >= info.max_model_len)
      throw ApiError(400, "This model's maximum context length is " + std::to_string(info.max_model_len) +
                              " tokens. However, your prompt has " + std::to_string(len) + " tokens.",
                     r.endpoint == Endpoint::Chat ? "messages" : "prompt", "context_length_exceeded");
    int64_t m = asked.value_or(std::min(dflt, info.max_model_len - len));
    if (len + m > info.max_model_len)
      throw ApiError(400, "This model's maximum context length is " + std::to_string(info.max_model_len) +
                              " tokens. However, you requested " + std::to_string(len + m) + " tokens (" +
                              std::to_string(len) + " in the prompt, " + std::to_string(m) +
                              " in the completion). Please reduce the prompt or " + param + ".",
                     param, "context_length_exceeded");
    r.max_tokens.push_back(m);
  }
}

}  // namespace

std::vector<RequestParams> ApiRequest::engine_requests() const {
  std::vector<RequestParams> out;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int j = 0; j < n; ++j) {
      RequestParams p;
      p.prompt = prompts[i];
      p.max_tokens = max_tokens[i];
      p.sampling = sampling;
      p.sampling.seed = sampling.seed + uint64_t(i * size_t(n) + size_t(j));
      p.ignore_eos = ignore_eos;
      p.eos_ids = eos_ids;
      p.stop = stop;
      p.top_logprobs = logprobs;
      p.speculative = speculative;
      p.skip_special_tokens = !parsing.keep_special_tokens();
      p.constraint = constraint;
      out.push_back(std::move(p));
    }
  return out;
}

ApiRequest parse_completion_request(const json& body, const ModelInfo& info, const Tokenizer* tok) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  check_model(body, info);
  ApiRequest r;
  r.endpoint = Endpoint::Completions;
  const json* p = field(body, "prompt");
  if (!p) throw ApiError(400, "'prompt' is required", "prompt");
  auto add_text = [&](const std::string& s) {
    if (!tok) throw ApiError(400, "this model has no tokenizer: send the prompt as token ids", "prompt");
    r.prompts.push_back(tok->encode(s, true));
    r.prompt_texts.push_back(s);
  };
  auto add_ids = [&](const json& a) {
    if (a.empty()) throw ApiError(400, "'prompt' must not be an empty list of token ids", "prompt");
    r.prompts.push_back(token_list(a, info, "prompt"));
    r.prompt_texts.push_back(tok ? tok->decode(r.prompts.back()) : "");
  };
  if (p->is_string()) {
    add_text(p->get<std::string>());
  } else if (p->is_array()) {
    if (p->empty()) throw ApiError(400, "'prompt' must not be empty", "prompt");
    if ((*p)[0].is_number()) {
      add_ids(*p);
    } else {
      if (p->size() > 64) throw ApiError(400, "'prompt' takes at most 64 prompts per request", "prompt");
      for (auto& x : *p) {
        if (x.is_string()) add_text(x.get<std::string>());
        else if (x.is_array()) add_ids(x);
        else throw ApiError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt");
      }
    }
  } else {
    throw ApiError(400, "'prompt' must be a string, a list of strings, or token ids", "prompt");
  }
  parse_common(body, info, r);
  if (auto v = opt_int(body, "logprobs", 0, 20)) r.logprobs = int(*v);
  r.echo = opt_bool(body, "echo").value_or(false);
  if (r.echo && r.logprobs >= 0) throw ApiError(400, "'echo' with 'logprobs' (prompt logprobs) is not supported", "echo");
  if (auto s = opt_string(body, "suffix"); s && !s->empty()) throw ApiError(400, "'suffix' is not supported", "suffix");
  set_max_tokens(body, info, r, opt_int(body, "max_tokens", 1, INT32_MAX), 16, "max_tokens");
  if (int64_t(r.prompts.size()) * r.n > 256) throw ApiError(400, "prompts x n must be at most 256", "n");
  return r;
}

namespace {

ojson chat_messages(const json& body) {
  const json* m = field(body, "messages");
  if (!m) throw ApiError(400, "'messages' is required", "messages");
  if (!m->is_array() || m->empty()) throw ApiError(400, "'messages' must be a non-empty list", "messages");
  ojson out = ojson::array();
  for (auto& msg : *m) {
    if (!msg.is_object()) throw ApiError(400, "each message must be an object", "messages");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) throw ApiError(400, "each message needs a string 'role'", "messages");
    ojson o = msg;
    auto c = msg.find("content");
    if (c != msg.end() && c->is_array()) {  // content parts: only text is supported
      std::string text;
      for (auto& part : *c) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto t = part.is_object() ? part.find("text") : part.end();
        if (!part.is_object() || type == part.end() || *type != "text" || t == part.end() || !t->is_string())
          throw ApiError(400, "only text content parts are supported", "messages");
        text += t->get<std::string>();
      }
      o["content"] = text;
    } else if (c != msg.end() && !c->is_string() && !c->is_null()) {
      throw ApiError(400, "message 'content' must be a string or a list of text parts", "messages");
    }
    out.push_back(std::move(o));
  }
  return out;
}

// Tools and reasoning: what this request parses out of its output (chat_tools.h).
void chat_parsing(const json& body, const ModelInfo& info, const std::string& prompt, ChatParsing& p) {
  parse_tool_choice(body, parse_tools(body), info.tool_format, p);
  p.reasoning = info.reasoning_format;
  if (const json* k = field(body, "chat_template_kwargs"); k && k->is_object()) {
    auto et = k->find("enable_thinking");
    if (et != k->end() && et->is_boolean() && !et->get<bool>()) p.reasoning = ReasoningFormat::None;
  }
  p.reasoning_starts_inside = p.reasoning != ReasoningFormat::None && prompt_opens_reasoning(prompt);
}

std::string render_chat(const json& body, const ChatTemplate* tmpl) {
  if (!tmpl)
    throw ApiError(400, "this model has no chat template: add chat_template.jinja to its folder "
                        "(gale serve also takes --chat-template FILE)", "messages");
  ojson msgs = chat_messages(body);
  prepare_tool_messages(msgs);
  ojson tools = parse_tools(body);
  ojson kwargs = ojson::object();
  if (const json* k = field(body, "chat_template_kwargs")) {
    if (!k->is_object()) throw ApiError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs");
    kwargs = *k;
  }
  bool add_gen = opt_bool(body, "add_generation_prompt").value_or(true);
  try {
    return tmpl->render(msgs, tools, add_gen, kwargs);
  } catch (const Error& e) {
    throw ApiError(400, std::string("chat template: ") + e.what(), "messages");
  }
}

}  // namespace

ApiRequest parse_chat_request(const json& body, const ModelInfo& info, const Tokenizer* tok, const ChatTemplate* tmpl) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  check_model(body, info);
  ApiRequest r;
  r.endpoint = Endpoint::Chat;
  if (!tok) throw ApiError(400, "this model has no tokenizer: chat needs one", "messages");
  std::string text = render_chat(body, tmpl);
  // The template writes the special tokens itself (as apply_chat_template(tokenize=True)).
  r.prompts.push_back(tok->encode(text, /*add_special_tokens=*/false));
  r.prompt_texts.push_back(text);
  if (r.prompts.back().empty()) throw ApiError(400, "the rendered conversation is empty", "messages");
  parse_common(body, info, r);
  chat_parsing(body, info, text, r.parsing);
  // tool_choice required or a named function: the output must be the calls, in the model's format.
  if (!r.parsing.tool_grammar.empty()) {
    if (r.constraint.active())
      throw ApiError(400, "'tool_choice' '" + r.parsing.tool_choice + "' cannot be combined with 'response_format' or "
                          "a guided_* field (the calls already follow the tools' schemas)", "tool_choice");
    r.constraint = {ConstraintSpec::Kind::Grammar, r.parsing.tool_grammar};
  }
  bool lp = opt_bool(body, "logprobs").value_or(false);
  auto top = opt_int(body, "top_logprobs", 0, 20);
  if (top && !lp) throw ApiError(400, "'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  if (lp) r.logprobs = int(top.value_or(0));
  auto mct = opt_int(body, "max_completion_tokens", 1, INT32_MAX);
  auto mt = opt_int(body, "max_tokens", 1, INT32_MAX);
  set_max_tokens(body, info, r, mct ? mct : mt, INT64_MAX, mct ? "max_completion_tokens" : "max_tokens");
  return r;
}

// ---- responses

ResponseBuilder::ResponseBuilder(const ApiRequest& req, const ModelInfo& info, const Tokenizer* tok, std::string id)
    : req_(req), info_(info), tok_(tok),
      id_(!id.empty() ? std::move(id) : random_id(req.endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-")),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {}

std::string ResponseBuilder::token_text(int32_t id) const {
  if (!tok_) return "token_id:" + std::to_string(id);
  int32_t a[1] = {id};
  return tok_->decode(a);
}

ojson ResponseBuilder::completion_logprobs(const std::vector<int32_t>& ids, const std::vector<TokenLogprob>& lps,
                                           int64_t text_offset) const {
  ojson tokens = ojson::array(), lp = ojson::array(), top = ojson::array(), off = ojson::array();
  for (size_t i = 0; i < lps.size(); ++i) {
    std::string t = token_text(lps[i].id);
    tokens.push_back(t);
    lp.push_back(lps[i].logprob);
    ojson d = ojson::object();
    for (auto& [tid, l] : lps[i].top) d[token_text(tid)] = l;
    top.push_back(std::move(d));
    off.push_back(text_offset);
    text_offset += int64_t(t.size());
  }
  (void)ids;
  return {{"tokens", tokens}, {"token_logprobs", lp}, {"top_logprobs", top}, {"text_offset", off}};
}

ojson ResponseBuilder::chat_logprobs(const std::vector<TokenLogprob>& lps) const {
  auto entry = [&](int32_t id, float l) {
    std::string t = token_text(id);
    ojson bytes = ojson::array();
    for (unsigned char c : t) bytes.push_back(int(c));
    return ojson{{"token", t}, {"logprob", l}, {"bytes", bytes}};
  };
  ojson content = ojson::array();
  for (auto& x : lps) {
    ojson e = entry(x.id, x.logprob);
    ojson top = ojson::array();
    for (auto& [tid, l] : x.top) top.push_back(entry(tid, l));
    e["top_logprobs"] = top;
    content.push_back(std::move(e));
  }
  return {{"content", content}, {"refusal", nullptr}};
}

ojson ResponseBuilder::usage(const std::vector<ChoiceState>& choices) const {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    completion += choices[i].completion_tokens;
    if (i % size_t(req_.n) == 0) {  // each prompt once, whatever n
      prompt += choices[i].prompt_tokens;
      cached += choices[i].cached_tokens;
    }
  }
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

ojson ResponseBuilder::full_response(const std::vector<ChoiceState>& choices) const {
  const bool chat = req_.endpoint == Endpoint::Chat;
  ojson cs = ojson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceState& c = choices[i];
    ojson lp = nullptr;
    if (req_.logprobs >= 0) lp = chat ? chat_logprobs(c.logprobs) : completion_logprobs(c.ids, c.logprobs, 0);
    if (chat && req_.parsing.active()) {
      ParsedChatMessage m = parse_chat_output(req_.parsing, c.text);
      ojson msg = {{"role", "assistant"}, {"content", m.content}};
      if (!m.calls.empty() && m.content.empty()) msg["content"] = nullptr;
      if (m.reasoning_active) msg["reasoning_content"] = m.reasoning.empty() ? ojson(nullptr) : ojson(m.reasoning);
      if (!m.calls.empty()) msg["tool_calls"] = tool_calls_json(m.calls);
      cs.push_back({{"index", i}, {"message", msg}, {"logprobs", lp},
                    {"finish_reason", chat_finish_reason(c.finish_reason, !m.calls.empty())}});
    } else if (chat) {
      cs.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", c.text}}}, {"logprobs", lp},
                    {"finish_reason", c.finish_reason}});
    } else {
      std::string text = req_.echo ? req_.prompt_texts[i / size_t(req_.n)] + c.text : c.text;
      cs.push_back({{"index", i}, {"text", text}, {"logprobs", lp}, {"finish_reason", c.finish_reason}});
    }
  }
  return {{"id", id_}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created_},
          {"model", info_.name}, {"choices", cs}, {"usage", usage(choices)}};
}

ojson ResponseBuilder::chunk(int index, const std::string& text, const std::vector<TokenLogprob>& lps,
                             const std::vector<int32_t>& ids, const std::string& finish_reason, int64_t text_offset) const {
  const bool chat = req_.endpoint == Endpoint::Chat;
  ojson lp = nullptr;
  if (req_.logprobs >= 0 && !lps.empty()) lp = chat ? chat_logprobs(lps) : completion_logprobs(ids, lps, text_offset);
  ojson fr = finish_reason.empty() ? ojson(nullptr) : ojson(finish_reason);
  ojson choice;
  if (chat) {
    ojson delta = ojson::object();
    if (!text.empty() || finish_reason.empty()) delta["content"] = text;
    choice = {{"index", index}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", fr}};
  } else {
    choice = {{"index", index}, {"text", text}, {"logprobs", lp}, {"finish_reason", fr}};
  }
  ojson j = {{"id", id_}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created_},
             {"model", info_.name}, {"choices", ojson::array({choice})}};
  if (req_.include_usage) j["usage"] = nullptr;
  return j;
}

ojson ResponseBuilder::delta_chunk(int index, ojson delta, std::vector<TokenLogprob>& lps,
                                   const std::string& finish_reason) const {
  ojson lp = nullptr;
  if (req_.logprobs >= 0 && !lps.empty()) lp = chat_logprobs(lps);
  lps.clear();
  ojson choice = {{"index", index}, {"delta", std::move(delta)}, {"logprobs", lp},
                  {"finish_reason", finish_reason.empty() ? ojson(nullptr) : ojson(finish_reason)}};
  ojson j = {{"id", id_}, {"object", "chat.completion.chunk"}, {"created", created_}, {"model", info_.name},
             {"choices", ojson::array({choice})}};
  if (req_.include_usage) j["usage"] = nullptr;
  return j;
}

std::vector<ojson> ResponseBuilder::parsed_chunks(int index, const std::string& text,
                                                  const std::vector<TokenLogprob>& lps, const std::string& finish_reason) {
  if (parse_.size() <= size_t(index)) parse_.resize(size_t(index) + 1);
  StreamParse& s = parse_[size_t(index)];
  if (!s.parser) s.parser = std::make_unique<ChatOutputParser>(req_.parsing);
  s.pending_lps.insert(s.pending_lps.end(), lps.begin(), lps.end());
  std::vector<ojson> out;
  auto emit = [&](const ChatOutputParser::Piece& p) {
    if (!p.reasoning.empty()) out.push_back(delta_chunk(index, {{"reasoning_content", p.reasoning}}, s.pending_lps, ""));
    if (!p.content.empty()) out.push_back(delta_chunk(index, {{"content", p.content}}, s.pending_lps, ""));
    if (!p.calls.empty())
      out.push_back(delta_chunk(index, {{"tool_calls", tool_call_deltas_json(p.calls)}}, s.pending_lps, ""));
  };
  if (!text.empty()) emit(s.parser->feed(text));
  if (!finish_reason.empty()) {
    emit(s.parser->finish());
    out.push_back(delta_chunk(index, ojson::object(), s.pending_lps, chat_finish_reason(finish_reason, s.parser->has_calls())));
  }
  return out;
}

ojson ResponseBuilder::chat_role_chunk(int index) const {
  ojson choice = {{"index", index}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                  {"finish_reason", nullptr}};
  ojson j = {{"id", id_}, {"object", "chat.completion.chunk"}, {"created", created_}, {"model", info_.name},
             {"choices", ojson::array({choice})}};
  if (req_.include_usage) j["usage"] = nullptr;
  return j;
}

ojson ResponseBuilder::usage_chunk(const std::vector<ChoiceState>& choices) const {
  const bool chat = req_.endpoint == Endpoint::Chat;
  return {{"id", id_}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created_},
          {"model", info_.name}, {"choices", ojson::array()}, {"usage", usage(choices)}};
}

// ---- tokenize / detokenize / models

ojson tokenize(const json& body, const ModelInfo& info, const Tokenizer* tok, const ChatTemplate* tmpl) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  check_model(body, info);
  if (!tok) throw ApiError(400, "this model has no tokenizer");
  std::vector<int32_t> ids;
  if (field(body, "messages")) {
    ids = tok->encode(render_chat(body, tmpl), opt_bool(body, "add_special_tokens").value_or(false));
  } else {
    auto p = opt_string(body, "prompt");
    if (!p) throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
    ids = tok->encode(*p, opt_bool(body, "add_special_tokens").value_or(true));
  }
  return {{"count", ids.size()}, {"max_model_len", info.max_model_len}, {"tokens", ids}};
}

ojson detokenize(const json& body, const ModelInfo& info, const Tokenizer* tok) {
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  check_model(body, info);
  if (!tok) throw ApiError(400, "this model has no tokenizer");
  const json* t = field(body, "tokens");
  if (!t || !t->is_array()) throw ApiError(400, "'tokens' (a list of token ids) is required", "tokens");
  return {{"prompt", tok->decode(token_list(*t, info, "tokens"))}};
}

ojson models_list(const ModelInfo& info) {
  return {{"object", "list"},
          {"data", ojson::array({{{"id", info.name}, {"object", "model"}, {"created", info.created},
                                  {"owned_by", "gale"}, {"root", info.name}, {"max_model_len", info.max_model_len}}})}};
}

}  // namespace gale::serve
