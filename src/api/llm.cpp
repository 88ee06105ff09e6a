#include "api/llm.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <unordered_map>

#include "core/checked_math.h"
#include "loader/model_config.h"
#include "model/kv_cache.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale {
namespace fs = std::filesystem;

namespace {

int64_t parse_int(const std::string& key, const std::string& v, int64_t lo) {
  int64_t x = 0;
  const char* end = v.data() + v.size();
  auto [p, ec] = std::from_chars(v.data(), end, x);
  if (v.empty() || ec != std::errc() || p != end) throw InvalidArgument(key + ": expected an integer, got '" + v + "'");
  if (x < lo) throw InvalidArgument(key + " must be >= " + std::to_string(lo) + " (got " + v + ")");
  return x;
}

double parse_double(const std::string& key, const std::string& v) {
  char* end = nullptr;
  const double x = v.empty() ? NAN : std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(x))
    throw InvalidArgument(key + ": expected a number, got '" + v + "'");
  return x;
}

bool parse_bool(const std::string& key, std::string v) {
  for (auto& c : v) c = char(std::tolower(uint8_t(c)));
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw InvalidArgument(key + ": expected true or false, got '" + v + "'");
}

void one_of(const std::string& key, const std::string& v, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  throw InvalidArgument(key + " must be one of " + list + " (got '" + v + "')");
}

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InvalidArgument(std::string(what) + ": cannot read '" + path + "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// bos_token / eos_token / ... of tokenizer_config.json, for a template given as text (as
// `gale serve --chat-template` gives them).
nlohmann::ordered_json special_tokens(const std::string& dir) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  const fs::path p = fs::path(dir) / "tokenizer_config.json";
  if (!fs::exists(p)) return out;
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    auto it = j.find(k);
    if (it == j.end()) continue;
    if (it->is_string()) out[k] = it->get<std::string>();
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) out[k] = (*it)["content"];
  }
  return out;
}

}  // namespace

const std::vector<std::string>& LLMOptions::keys() {
  static const std::vector<std::string> k = {
      "device", "dtype", "threads", "gpu_memory_utilization", "quantization", "quantization_group",
      "quantize_lm_head", "keep_16bit", "kv_cache_dtype", "max_num_seqs", "max_num_batched_tokens",
      "kv_cache_memory", "host_kv_cache", "enable_prefix_caching", "block_size", "speculative", "num_speculative_tokens",
      "chat_template"};
  return k;
}

void LLMOptions::set(const std::string& key, const std::string& v) {
  ModelOptions& m = model;
  EngineOptions& e = engine;
  if (key == "model") m.model = v;
  else if (key == "device") m.device = v;
  else if (key == "dtype") { one_of(key, v, {"auto", "f32", "bf16"}); m.dtype = v == "auto" ? "" : v; }
  else if (key == "threads") m.threads = int(std::min<int64_t>(parse_int(key, v, 0), 1 << 20));
  else if (key == "gpu_memory_utilization") {
    m.gpu_memory_utilization = parse_double(key, v);
    if (m.gpu_memory_utilization < 0.01 || m.gpu_memory_utilization > 1.0)
      throw InvalidArgument("gpu_memory_utilization must be in [0.01, 1] (got " + v + ")");
  } else if (key == "quantization") { one_of(key, v, {"none", "fp8", "int8", "int4"}); m.quantization = v; }
  else if (key == "quantization_group") m.quantization_group = parse_int(key, v, 1);
  else if (key == "quantize_lm_head") m.quantize_lm_head = parse_bool(key, v);
  else if (key == "keep_16bit") {
    m.keep_16bit.clear();
    std::stringstream ss(v);
    for (std::string p; std::getline(ss, p, ',');)
      if (!p.empty()) m.keep_16bit.push_back(p);
  } else if (key == "kv_cache_dtype") { one_of(key, v, {"auto", "bf16", "fp8"}); m.kv_cache_dtype = v; }
  else if (key == "max_num_seqs") e.max_num_seqs = parse_int(key, v, 1);
  else if (key == "max_num_batched_tokens") e.max_num_batched_tokens = parse_int(key, v, 1);
  else if (key == "kv_cache_memory") {
    try {
      parse_bytes(v);
    } catch (const Error& err) {
      throw InvalidArgument(std::string("kv_cache_memory: ") + err.what());
    }
    e.kv_cache_memory = v;
  } else if (key == "host_kv_cache") {
    try {
      parse_bytes(v);
    } catch (const Error& err) {
      throw InvalidArgument(std::string("host_kv_cache: ") + err.what());
    }
    e.host_kv_cache = v;
  } else if (key == "enable_prefix_caching") e.no_prefix_cache = !parse_bool(key, v);
  else if (key == "block_size") e.block_size = parse_int(key, v, 1);
  else if (key == "speculative") e.speculative = v;
  else if (key == "num_speculative_tokens") e.num_speculative_tokens = v;
  else if (key == "chat_template") chat_template = v;
  else {
    std::string list;
    for (const auto& k : keys()) list += (list.empty() ? "" : ", ") + k;
    throw InvalidArgument("unknown engine argument '" + key + "' (known: " + list + ")");
  }
}

struct LLM::Impl {
  std::recursive_mutex mu;
  std::string dir;
  LoadedModel lm, draft;
  std::unique_ptr<Tokenizer> tok;
  std::optional<ChatTemplate> tmpl;
  GenerationDefaults defaults;
  EngineOptions engine_opts;  // as given (request_speculates: was a proposer named?)
  std::unique_ptr<Engine> engine;
  struct Pending {
    std::deque<RequestOutput> outs;  // what the engine returned for it, not yet handed out
    bool finished = false;
  };
  std::unordered_map<uint64_t, Pending> live;

  // One engine step; each output goes to its request's queue (cancelled requests' are dropped).
  void pump() {
    for (RequestOutput& out : engine->step()) {
      auto it = live.find(out.id);
      if (it == live.end()) continue;
      if (out.finished) it->second.finished = true;
      it->second.outs.push_back(std::move(out));
    }
  }

  // Everything queued for `id`, as one Delta (the request's entry stays).
  static Delta take(uint64_t id, Pending& p) {
    Delta d;
    d.id = id;
    for (RequestOutput& o : p.outs) {
      d.ids.insert(d.ids.end(), o.new_ids.begin(), o.new_ids.end());
      d.text += o.new_text;
      d.logprobs.insert(d.logprobs.end(), std::make_move_iterator(o.logprobs.begin()), std::make_move_iterator(o.logprobs.end()));
      d.prompt_tokens = o.prompt_tokens;
      d.completion_tokens = o.completion_tokens;
      d.cached_prompt_tokens = o.cached_prompt_tokens;
      if (o.finished) {
        d.finished = true;
        d.finish_reason = o.finish_reason;
        d.error = o.error;
      }
    }
    p.outs.clear();
    return d;
  }

  RequestParams request(std::vector<int32_t> prompt, const GenerationParams& g) const {
    if (prompt.empty()) throw InvalidArgument("the prompt is empty");
    if (g.max_tokens < 0) throw InvalidArgument("max_tokens must be >= 0 (got " + std::to_string(g.max_tokens) + ")");
    RequestParams r;
    r.prompt = std::move(prompt);
    r.max_tokens = g.max_tokens;
    r.eos_ids = defaults.eos_token_ids;
    const GenerationDefaults& gd = defaults;
    SamplingParams& sp = r.sampling;
    sp.temperature = g.temperature.value_or(gd.do_sample ? gd.temperature : 0.0f);
    sp.top_k = g.top_k.value_or(gd.do_sample ? gd.top_k : 0);
    if (sp.top_k == -1) sp.top_k = 0;  // vLLM's spelling of "off"
    sp.top_p = g.top_p.value_or(gd.do_sample ? gd.top_p : 1.0f);
    sp.min_p = g.min_p.value_or(gd.do_sample ? gd.min_p : 0.0f);
    sp.repetition_penalty = g.repetition_penalty.value_or(gd.repetition_penalty);
    sp.presence_penalty = g.presence_penalty;
    sp.frequency_penalty = g.frequency_penalty;
    sp.seed = g.seed ? *g.seed : std::random_device{}();
    r.ignore_eos = g.ignore_eos;
    r.speculative = request_speculates(engine_opts, g.seed.has_value(), sp.temperature);
    for (const std::string& s : g.stop)
      if (s.empty()) throw InvalidArgument("stop strings must not be empty");
    r.stop = g.stop;
    if (g.logprobs < -1 || g.logprobs > 20)
      throw InvalidArgument("logprobs must be between 0 and 20, or unset (got " + std::to_string(g.logprobs) + ")");
    r.top_logprobs = g.logprobs;
    r.constraint = g.constraint;
    try {
      validate(sp);
    } catch (const Error& e) {
      throw InvalidArgument(e.what());
    }
    return r;
  }

  void require_tokenizer() const {
    if (!tok) throw InvalidArgument("the model in '" + dir + "' has no tokenizer.json: give token ids");
  }
};

LLM::LLM(const LLMOptions& o) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = resolve_model(o.model);
  m.engine_opts = o.engine;
  m.lm = load_model(m.dir, backend_options(o.model), load_options(o.model));
  const ModelConfig& cfg = m.lm.model->config();
  if (!m.lm.synthetic && fs::exists(fs::path(m.dir) / "tokenizer.json")) m.tok = Tokenizer::load(m.dir);
  m.defaults = m.lm.synthetic ? GenerationDefaults{} : load_generation_defaults(m.dir, cfg);
  if (!o.chat_template.empty()) {
    const bool inline_text = o.chat_template.find("{{") != std::string::npos || o.chat_template.find("{%") != std::string::npos;
    const std::string text = inline_text ? o.chat_template : read_text_file(o.chat_template, "chat_template");
    m.tmpl = ChatTemplate::from_string(text, m.lm.synthetic ? nlohmann::ordered_json::object() : special_tokens(m.dir));
  } else if (!m.lm.synthetic) {
    try {
      m.tmpl = ChatTemplate::load(m.dir);
    } catch (const Error&) {  // no template: chat() says so
    }
  }
  EngineConfig ec = engine_config(o.engine, !m.lm.model->backend().is_cpu());
  if (std::string dd = apply_speculation(o.engine, m.dir, ec); !dd.empty())
    m.draft = load_model(dd, backend_options(o.model), load_options(o.model));
  m.engine = std::make_unique<Engine>(*m.lm.model, m.tok.get(), ec, m.draft.model.get());
}

LLM::~LLM() = default;

std::vector<int32_t> LLM::encode(std::string_view text, bool add_special_tokens) const {
  impl_->require_tokenizer();
  try {
    return impl_->tok->encode(text, add_special_tokens);
  } catch (const Error& e) {  // the text itself (the tokenizer checks nothing else)
    throw InvalidArgument(e.what());
  }
}

std::string LLM::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  impl_->require_tokenizer();
  try {
    return impl_->tok->decode(ids, skip_special_tokens);
  } catch (const Error& e) {
    throw InvalidArgument(e.what());
  }
}

bool LLM::has_tokenizer() const { return impl_->tok != nullptr; }
int64_t LLM::vocab_size() const { return impl_->lm.model->config().vocab_size; }

std::string LLM::apply_chat_template(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                     const nlohmann::ordered_json& tools, const nlohmann::ordered_json& extra) const {
  if (!impl_->tmpl)
    throw InvalidArgument("the model in '" + impl_->dir +
                          "' has no chat template: give one with the chat_template engine argument");
  if (!messages.is_array() || messages.empty()) throw InvalidArgument("messages must be a non-empty list of {role, content}");
  for (const auto& msg : messages)
    if (!msg.is_object() || !msg.contains("role")) throw InvalidArgument("each message must be an object with a role");
  if (!tools.is_null() && !tools.is_array()) throw InvalidArgument("tools must be a list");
  if (!extra.is_object()) throw InvalidArgument("chat_template_kwargs must be an object");
  return impl_->tmpl->render(messages, tools, add_generation_prompt, extra);
}

std::vector<int32_t> LLM::encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                      const nlohmann::ordered_json& tools, const nlohmann::ordered_json& extra) const {
  impl_->require_tokenizer();
  return impl_->tok->encode(apply_chat_template(messages, add_generation_prompt, tools, extra), false);
}

uint64_t LLM::submit(std::vector<int32_t> prompt, const GenerationParams& p) {
  std::lock_guard lk(impl_->mu);
  RequestParams r = impl_->request(std::move(prompt), p);
  uint64_t id;
  try {
    id = impl_->engine->add_request(std::move(r));
  } catch (const Error& e) {  // the engine's own checks: ids, context, sampling ranges
    throw InvalidArgument(e.what());
  }
  impl_->live[id];
  return id;
}

Delta LLM::next(uint64_t id) {
  std::lock_guard lk(impl_->mu);
  auto it = impl_->live.find(id);
  if (it == impl_->live.end()) throw InvalidArgument("no request " + std::to_string(id) + " in flight");
  while (it->second.outs.empty()) {
    if (!impl_->engine->has_unfinished()) throw Error("internal: request " + std::to_string(id) + " has no output");
    impl_->pump();
    it = impl_->live.find(id);  // a callback may not run here, but keep the iterator honest
  }
  Delta d = Impl::take(id, it->second);
  if (d.finished) impl_->live.erase(it);
  return d;
}

void LLM::cancel(uint64_t id) {
  std::lock_guard lk(impl_->mu);
  auto it = impl_->live.find(id);
  if (it == impl_->live.end()) return;
  if (!it->second.finished) impl_->engine->abort(id);
  impl_->live.erase(it);  // its last outputs (finish_reason "abort") are dropped by pump()
}

std::vector<Completion> LLM::generate(const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<GenerationParams>& params,
                                      const std::function<bool(const Delta&)>& on_delta) {
  if (params.size() != 1 && params.size() != prompts.size())
    throw InvalidArgument("give one set of sampling parameters, or one per prompt (" + std::to_string(prompts.size()) +
                          " prompts, " + std::to_string(params.size()) + " parameter sets)");
  std::lock_guard lk(impl_->mu);
  Impl& m = *impl_;
  std::vector<Completion> out(prompts.size());
  std::vector<uint64_t> ids;
  auto cancel_all = [&] {
    for (uint64_t id : ids) cancel(id);
  };
  try {
    for (size_t i = 0; i < prompts.size(); ++i) {
      out[i].prompt_ids = prompts[i];
      ids.push_back(submit(prompts[i], params[params.size() == 1 ? 0 : i]));
      out[i].id = ids.back();
    }
    std::vector<bool> done(prompts.size(), false);
    size_t remaining = prompts.size();
    while (remaining > 0) {
      const bool busy = m.engine->has_unfinished();
      if (busy) m.pump();
      bool progressed = false;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (done[i]) continue;
        auto it = m.live.find(ids[i]);
        if (it == m.live.end() || it->second.outs.empty()) continue;
        Delta d = Impl::take(ids[i], it->second);
        progressed = true;
        Completion& c = out[i];
        c.ids.insert(c.ids.end(), d.ids.begin(), d.ids.end());
        c.text += d.text;
        c.logprobs.insert(c.logprobs.end(), std::make_move_iterator(d.logprobs.begin()), std::make_move_iterator(d.logprobs.end()));
        c.prompt_tokens = d.prompt_tokens;
        c.completion_tokens = d.completion_tokens;
        c.cached_prompt_tokens = d.cached_prompt_tokens;
        if (d.finished && d.finish_reason == "error") throw Error(d.error.empty() ? "the request failed" : d.error);
        const bool keep = !on_delta || on_delta(d);
        if (d.finished || !keep) {
          c.finish_reason = d.finished ? d.finish_reason : "abort";
          cancel(ids[i]);
          done[i] = true;
          --remaining;
        }
      }
      if (!busy && !progressed) throw Error("internal: the engine is idle with requests unfinished");
    }
  } catch (...) {
    cancel_all();
    throw;
  }
  return out;
}

const std::string& LLM::model_dir() const { return impl_->dir; }

EngineStats LLM::stats() const {
  std::lock_guard lk(impl_->mu);
  return impl_->engine->stats();
}

}  // namespace gale
