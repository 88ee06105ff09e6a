// include/gale.h over the in-process facade (api/llm.h): handles, status codes and the
// thread-local error text. Every entry point catches everything: no exception crosses the ABI.
#include "gale.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "api/llm.h"

struct gale_options {
  gale::LLMOptions o;
};
struct gale_model {
  std::unique_ptr<gale::LLM> llm;
};
struct gale_params {
  gale::GenerationParams p;
};
struct gale_output {
  std::string text;
  std::vector<int32_t> ids;
  bool finished = false;
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

namespace {

thread_local std::string last_error;

gale_status fail(gale_status s, const std::string& msg) {
  last_error = msg;
  return s;
}

// Runs f, turning exceptions into status codes. `loading`: a gale::Error is about the model's files.
template <class F>
gale_status guard(F&& f, bool loading = false) {
  try {
    f();
    return GALE_OK;
  } catch (const gale::InvalidArgument& e) {
    return fail(GALE_ERR_INVALID_ARGUMENT, e.what());
  } catch (const gale::Error& e) {
    return fail(loading ? GALE_ERR_LOAD : GALE_ERR_RUNTIME, e.what());
  } catch (const std::bad_alloc&) {
    return fail(GALE_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(GALE_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(GALE_ERR_INTERNAL, "internal error: unknown exception");
  }
}

#define GALE_REQUIRE(cond, what) \
  if (!(cond)) return fail(GALE_ERR_INVALID_ARGUMENT, what)

char* copy_string(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

gale_output* make_output(const gale::Delta& d) {
  auto* o = new gale_output;
  o->text = d.text;
  o->ids = d.ids;
  o->finished = d.finished;
  o->finish_reason = d.finish_reason;
  o->prompt_tokens = d.prompt_tokens;
  o->completion_tokens = d.completion_tokens;
  return o;
}

}  // namespace

extern "C" {

const char* gale_version(void) { return "0.1.0"; }
const char* gale_last_error(void) { return last_error.c_str(); }

const char* gale_status_name(gale_status s) {
  switch (s) {
    case GALE_OK: return "GALE_OK";
    case GALE_ERR_INVALID_ARGUMENT: return "GALE_ERR_INVALID_ARGUMENT";
    case GALE_ERR_LOAD: return "GALE_ERR_LOAD";
    case GALE_ERR_RUNTIME: return "GALE_ERR_RUNTIME";
    case GALE_ERR_OUT_OF_MEMORY: return "GALE_ERR_OUT_OF_MEMORY";
    case GALE_ERR_INTERNAL: return "GALE_ERR_INTERNAL";
  }
  return "GALE_ERR_UNKNOWN";
}

gale_status gale_options_create(gale_options** out) {
  GALE_REQUIRE(out, "gale_options_create: out is NULL");
  return guard([&] { *out = new gale_options; });
}

gale_status gale_options_set(gale_options* o, const char* key, const char* value) {
  GALE_REQUIRE(o && key && value, "gale_options_set: NULL argument");
  return guard([&] { o->o.set(key, value); });
}

void gale_options_free(gale_options* o) { delete o; }

gale_status gale_model_load(const char* dir, const gale_options* options, gale_model** out) {
  GALE_REQUIRE(out, "gale_model_load: out is NULL");
  *out = nullptr;
  return guard(
      [&] {
        gale::LLMOptions o = options ? options->o : gale::LLMOptions{};
        if (dir) o.model.model = dir;
        if (dir && !*dir) throw gale::InvalidArgument("gale_model_load: the folder name is empty");
        auto m = std::make_unique<gale_model>();
        m->llm = std::make_unique<gale::LLM>(o);
        *out = m.release();
      },
      /*loading=*/true);
}

void gale_model_free(gale_model* m) { delete m; }

int64_t gale_model_vocab_size(const gale_model* m) { return m ? m->llm->vocab_size() : 0; }

gale_status gale_tokenize(gale_model* m, const char* text, size_t len, int add_special_tokens, int32_t** ids,
                          size_t* n) {
  GALE_REQUIRE(m && (text || len == 0) && ids && n, "gale_tokenize: NULL argument");
  *ids = nullptr;
  *n = 0;
  return guard([&] {
    std::vector<int32_t> v = m->llm->encode(std::string_view(text ? text : "", len), add_special_tokens != 0);
    auto* p = static_cast<int32_t*>(std::malloc(std::max<size_t>(1, v.size()) * sizeof(int32_t)));
    if (!p) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(p, v.data(), v.size() * sizeof(int32_t));
    *ids = p;
    *n = v.size();
  });
}

void gale_ids_free(int32_t* ids) { std::free(ids); }

gale_status gale_detokenize(gale_model* m, const int32_t* ids, size_t n, int skip_special_tokens, char** text,
                            size_t* len) {
  GALE_REQUIRE(m && (ids || n == 0) && text, "gale_detokenize: NULL argument");
  *text = nullptr;
  return guard([&] {
    std::string s = m->llm->decode(std::span<const int32_t>(ids, n), skip_special_tokens != 0);
    *text = copy_string(s);
    if (len) *len = s.size();
  });
}

void gale_string_free(char* s) { std::free(s); }

gale_status gale_apply_chat_template(gale_model* m, const char* messages_json, int add_generation_prompt, char** text,
                                     size_t* len) {
  GALE_REQUIRE(m && messages_json && text, "gale_apply_chat_template: NULL argument");
  *text = nullptr;
  return guard([&] {
    auto messages = nlohmann::ordered_json::parse(messages_json, nullptr, /*allow_exceptions=*/false);
    if (messages.is_discarded()) throw gale::InvalidArgument("gale_apply_chat_template: messages are not valid JSON");
    std::string s = m->llm->apply_chat_template(messages, add_generation_prompt != 0);
    *text = copy_string(s);
    if (len) *len = s.size();
  });
}

gale_status gale_params_create(gale_params** out) {
  GALE_REQUIRE(out, "gale_params_create: out is NULL");
  return guard([&] { *out = new gale_params; });
}

void gale_params_free(gale_params* p) { delete p; }

#define GALE_SETTER(name, type, field)                                      \
  gale_status gale_params_set_##name(gale_params* p, type v) {             \
    GALE_REQUIRE(p, "gale_params_set_" #name ": params is NULL");          \
    p->p.field = v;                                                         \
    return GALE_OK;                                                         \
  }
GALE_SETTER(max_tokens, int64_t, max_tokens)
GALE_SETTER(temperature, float, temperature)
GALE_SETTER(top_p, float, top_p)
GALE_SETTER(top_k, int32_t, top_k)
GALE_SETTER(min_p, float, min_p)
GALE_SETTER(repetition_penalty, float, repetition_penalty)
GALE_SETTER(presence_penalty, float, presence_penalty)
GALE_SETTER(frequency_penalty, float, frequency_penalty)
GALE_SETTER(seed, uint64_t, seed)
#undef GALE_SETTER

gale_status gale_params_set_ignore_eos(gale_params* p, int ignore_eos) {
  GALE_REQUIRE(p, "gale_params_set_ignore_eos: params is NULL");
  p->p.ignore_eos = ignore_eos != 0;
  return GALE_OK;
}

gale_status gale_params_add_stop(gale_params* p, const char* stop) {
  GALE_REQUIRE(p && stop, "gale_params_add_stop: NULL argument");
  GALE_REQUIRE(*stop, "gale_params_add_stop: a stop string must not be empty");
  return guard([&] { p->p.stop.emplace_back(stop); });
}

gale_status gale_request_submit(gale_model* m, const int32_t* prompt, size_t n, const gale_params* params,
                                uint64_t* id) {
  GALE_REQUIRE(m && (prompt || n == 0) && id, "gale_request_submit: NULL argument");
  return guard([&] {
    *id = m->llm->submit(std::vector<int32_t>(prompt, prompt + n), params ? params->p : gale::GenerationParams{});
  });
}

gale_status gale_request_submit_text(gale_model* m, const char* prompt, const gale_params* params, uint64_t* id) {
  GALE_REQUIRE(m && prompt && id, "gale_request_submit_text: NULL argument");
  return guard([&] { *id = m->llm->submit(m->llm->encode(prompt, true), params ? params->p : gale::GenerationParams{}); });
}

gale_status gale_request_next(gale_model* m, uint64_t id, gale_output** out) {
  GALE_REQUIRE(m && out, "gale_request_next: NULL argument");
  *out = nullptr;
  return guard([&] {
    gale::Delta d = m->llm->next(id);
    if (d.finished && d.finish_reason == "error") throw gale::Error(d.error.empty() ? "the request failed" : d.error);
    *out = make_output(d);
  });
}

gale_status gale_request_cancel(gale_model* m, uint64_t id) {
  GALE_REQUIRE(m, "gale_request_cancel: model is NULL");
  return guard([&] { m->llm->cancel(id); });
}

gale_status gale_generate(gale_model* m, const int32_t* prompt, size_t n, const gale_params* params,
                          gale_stream_fn cb, void* user, gale_output** result) {
  GALE_REQUIRE(m && (prompt || n == 0) && result, "gale_generate: NULL argument");
  *result = nullptr;
  return guard([&] {
    std::function<bool(const gale::Delta&)> on_delta;
    if (cb)
      on_delta = [&](const gale::Delta& d) {
        return cb(user, d.text.c_str(), d.text.size(), d.ids.data(), d.ids.size()) == 0;
      };
    std::vector<gale::Completion> c = m->llm->generate({std::vector<int32_t>(prompt, prompt + n)},
                                                       {params ? params->p : gale::GenerationParams{}}, on_delta);
    auto* o = new gale_output;
    o->text = std::move(c[0].text);
    o->ids = std::move(c[0].ids);
    o->finished = true;
    o->finish_reason = c[0].finish_reason;
    o->prompt_tokens = c[0].prompt_tokens;
    o->completion_tokens = c[0].completion_tokens;
    *result = o;
  });
}

void gale_output_free(gale_output* o) { delete o; }

const char* gale_output_text(const gale_output* o, size_t* len) {
  if (len) *len = o ? o->text.size() : 0;
  return o ? o->text.c_str() : "";
}

const int32_t* gale_output_ids(const gale_output* o, size_t* n) {
  if (n) *n = o ? o->ids.size() : 0;
  return o ? o->ids.data() : nullptr;
}

int gale_output_finished(const gale_output* o) { return o && o->finished ? 1 : 0; }
const char* gale_output_finish_reason(const gale_output* o) { return o ? o->finish_reason.c_str() : ""; }
int64_t gale_output_prompt_tokens(const gale_output* o) { return o ? o->prompt_tokens : 0; }
int64_t gale_output_completion_tokens(const gale_output* o) { return o ? o->completion_tokens : 0; }

}  // extern "C"
