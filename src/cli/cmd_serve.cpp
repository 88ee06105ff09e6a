// gale serve: the OpenAI-compatible HTTP server (src/serve) over one Engine.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.h"
#include "cli/config_options.h"
#include "cli/engine_options.h"
#include "cli/kv_events_option.h"
#include "cli/parallel_options.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "engine/engine.h"
#include "loader/model_config.h"
#include "model/model_loader.h"
#include "serve/server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

namespace fs = std::filesystem;

struct ServeOptions {
  ModelOptions model;
  EngineOptions engine;
  ParallelOptions parallel;
  serve::ServerConfig server;
  std::string served_name;
  std::string chat_template;
  int64_t max_model_len = 0;
  std::string tool_call_parser = "auto";
  std::string reasoning_parser = "auto";
  std::string config;  // --config FILE (cli/config_options.h)
  KvEventsOptions kv_events;
};

// The real Engine behind the server's engine thread.
class EngineAdapter : public serve::StepEngine {
 public:
  explicit EngineAdapter(Engine& e) : e_(e) {}
  uint64_t add_request(RequestParams p) override { return e_.add_request(std::move(p)); }
  void abort(uint64_t id) override { e_.abort(id); }
  std::vector<RequestOutput> step() override { return e_.step(); }
  bool has_unfinished() const override { return e_.has_unfinished(); }
  EngineStats stats() const override { return e_.stats(); }

 private:
  Engine& e_;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// bos_token / eos_token of tokenizer_config.json, for a template given with --chat-template.
nlohmann::ordered_json special_tokens(const std::string& dir) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  fs::path p = fs::path(dir) / "tokenizer_config.json";
  if (!fs::exists(p)) return out;
  auto j = nlohmann::json::parse(read_file(p.string()), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    auto it = j.find(k);
    if (it == j.end()) continue;
    if (it->is_string()) out[k] = it->get<std::string>();
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) out[k] = (*it)["content"];
  }
  return out;
}

void run_serve(ServeOptions& o) {
  ParallelRun par(o.parallel);  // --tp: this process's rank; outlives the model and the engine
  const std::string dir = resolve_model(o.model);
  if (const char* k = std::getenv("GALE_API_KEY"); k && o.server.api_key.empty()) o.server.api_key = k;
  LoadedModel lm = load_model(dir, par.with_group(backend_options(o.model)), load_options(o.model));
  if (par.follower()) return par.follow(*lm.model);  // ranks 1..N-1: rank 0 serves HTTP
  const ModelConfig& cfg = lm.model->config();
  std::unique_ptr<Tokenizer> tok;
  if (!lm.synthetic && fs::exists(fs::path(dir) / "tokenizer.json")) tok = Tokenizer::load(dir);
  std::optional<ChatTemplate> tmpl;
  if (!o.chat_template.empty()) {
    tmpl = ChatTemplate::from_string(read_file(o.chat_template), lm.synthetic ? nlohmann::ordered_json::object() : special_tokens(dir));
  } else if (!lm.synthetic) {
    try {
      tmpl = ChatTemplate::load(dir);
    } catch (const Error&) {  // no template: /v1/chat/completions answers 400 saying so
    }
  }

  serve::ModelInfo info;
  // Tool calls and reasoning: the flags, else what the chat template shows (chat_tools.h).
  const std::string tmpl_src = tmpl ? tmpl->source() : "";
  info.tool_format = serve::tool_call_format_from_name(o.tool_call_parser).value_or(serve::detect_tool_call_format(tmpl_src));
  info.reasoning_format = serve::reasoning_format_from_name(o.reasoning_parser).value_or(serve::detect_reasoning_format(tmpl_src));
  info.name = !o.served_name.empty() ? o.served_name
              : lm.synthetic         ? dir
                                     : fs::path(dir).lexically_normal().filename().string();
  if (info.name.empty()) info.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  info.max_model_len = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096;
  if (o.max_model_len > 0) info.max_model_len = std::min(info.max_model_len, o.max_model_len);
  info.vocab_size = cfg.vocab_size;
  info.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  // Sampling defaults: the model's generation_config.json when it samples, else OpenAI's.
  GenerationDefaults gd = lm.synthetic ? GenerationDefaults{} : load_generation_defaults(dir, cfg);
  info.defaults.temperature = gd.do_sample ? gd.temperature : 1.0f;
  info.defaults.top_k = gd.do_sample ? gd.top_k : 0;
  info.defaults.top_p = gd.do_sample ? gd.top_p : 1.0f;
  info.defaults.min_p = gd.do_sample ? gd.min_p : 0.0f;
  info.defaults.repetition_penalty = gd.repetition_penalty;
  info.eos_ids = gd.eos_token_ids;

  EngineConfig ec = engine_config(o.engine, !lm.model->backend().is_cpu());
  ec.followers = par.followers();
  LoadedModel draft;  // speculative decoding's draft model, when one proposes
  if (std::string dd = apply_speculation(o.engine, dir, ec, &info.speculative); !dd.empty())
    draft = load_model(dd, backend_options(o.model), load_options(o.model));
  std::unique_ptr<KvEventPublisher> kv_events = start_kv_events(o.kv_events, ec);  // outlives the engine
  Engine engine(*lm.model, tok.get(), ec, draft.model.get());
  EngineAdapter adapter(engine);
  if (kv_events)  // the publisher's counters move on its own thread, between engine steps
    o.server.live_stats = [p = kv_events.get()](EngineStats& s) {
      s.kv_events_sent = p->num_sent();
      s.kv_events_dropped = p->num_dropped();
    };
  serve::Server server(adapter, tok.get(), tmpl ? &*tmpl : nullptr, info, o.server);
  server.start();
  std::fprintf(stderr, "gale serve: model %s (context %lld), KV cache %s, %lld tokens, listening on http://%s:%d%s\n",
               info.name.c_str(), (long long)info.max_model_len, kv_cache_dtype_name(lm.model->kv_dtype()),
               (long long)engine.kv_cache().capacity_tokens(), o.server.host.c_str(), server.port(),
               o.server.api_key.empty() ? "" : " (API key required)");
  server.run(/*handle_signals=*/true);
  std::fprintf(stderr, "gale serve: stopped\n");
}

CommandRegistrar reg{60, [](CLI::App& root) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* sub = root.add_subcommand("serve", "OpenAI-compatible HTTP server (completions, chat, metrics)");
  add_model_options(sub, o->model);
  add_engine_options(sub, o->engine);
  add_parallel_options(sub, o->parallel);
  auto& s = o->server;
  sub->add_option("--host", s.host, "Address to bind (default 127.0.0.1: this machine only)");
  sub->add_option("--port", s.port, "TCP port (default 8000; 0 = any free port)")->check(CLI::Range(0, 65535));
  sub->add_option("--api-key", s.api_key, "Require 'Authorization: Bearer KEY' (else $GALE_API_KEY); /health stays open");
  sub->add_option("--served-model-name", o->served_name, "Model name clients use (default: the model folder's name)");
  sub->add_option("--chat-template", o->chat_template, "Jinja chat template file (default: the model's own)");
  sub->add_option("--tool-call-parser", o->tool_call_parser,
                  "Tool-call format parsed from chat output when a request has tools: auto (from the chat template), "
                  "hermes, llama3_json, mistral or none")
      ->check(CLI::IsMember({"auto", "hermes", "llama3_json", "mistral", "none"}));
  sub->add_option("--reasoning-parser", o->reasoning_parser,
                  "Split <think>...</think> into reasoning_content: auto (from the chat template), qwen3, deepseek_r1 or none")
      ->check(CLI::IsMember({"auto", "qwen3", "deepseek_r1", "none"}));
  sub->add_option("--max-model-len", o->max_model_len, "Context length to serve (default: the model's)")->check(CLI::PositiveNumber);
  sub->add_option("--max-pending", s.max_in_flight, "Sequences accepted and unfinished before answering 429 (default 1024)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-connections", s.max_connections,
                  "Open connections served at once; one more is answered 503 and closed (default 1024)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-body-bytes", s.max_body_bytes, "Largest request body (default 8 MiB; larger gets 413)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--request-timeout", s.request_timeout_s, "Seconds a request may run before it is aborted (default 600)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--drain-timeout", s.drain_timeout_s, "Seconds SIGTERM waits for in-flight requests (default 30)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--http-threads", s.io_threads, "Threads serving connections (default 1; the engine has its own)")
      ->check(CLI::Range(1, 64));
  sub->add_flag("--log-requests", s.log_requests, "Print one line per request on stderr");
  add_kv_events_options(sub, o->kv_events);
  add_config_option(sub, o->config);
  sub->callback([o, sub] {
    apply_config_file(sub, o->config);
    run_serve(*o);
  });
}};

}  // namespace
}  // namespace gale::cli
