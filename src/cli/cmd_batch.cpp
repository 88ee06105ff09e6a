// gale batch: offline jobs in the OpenAI batch format. Every input line is one request
// ({"custom_id", "method", "url", "body"}); every output line one result
// ({"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}).
//
// Durability: each result is appended as one whole line by a single write() on an O_APPEND
// descriptor as soon as its request finishes. A write() that returned is in the page cache, so
// kill -9 (or SIGINT/SIGTERM, which finish the current step first) loses no completed result.
// fdatasync runs at most once a second and at exit: it only guards against a machine crash,
// where up to a second of results may be lost or the last line torn; rerunning repairs the tail
// (cuts the torn line) and recomputes whatever is missing. Rerunning the same command resumes:
// custom_ids already in the output are skipped.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "cli/command.h"
#include "cli/engine_options.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "engine/engine.h"
#include "loader/model_config.h"
#include "model/model_loader.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) { g_signal = sig; }

struct BatchOptions {
  ModelOptions model;
  EngineOptions engine;
  std::string input, output, errors;
};

// A request read from the input, not yet handed to the engine.
struct Pending {
  int64_t line = 0;
  std::string custom_id;
  bool chat = false;
  json body;
};

struct Running {
  Pending req;
  std::vector<int32_t> ids;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  int64_t prompt_tokens = 0;
};

std::string errno_text() { return std::strerror(errno); }

// The output file, append-only. Repairs a torn last line left by a crash.
class ResultFile {
 public:
  explicit ResultFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error("cannot open " + path + ": " + errno_text());
  }
  ~ResultFile() {
    if (fd_ >= 0) {
      ::fdatasync(fd_);
      ::close(fd_);
    }
  }

  // custom_ids of the complete lines; cuts an incomplete last line.
  std::unordered_set<std::string> scan_and_repair() {
    std::unordered_set<std::string> done;
    std::ifstream in(path_, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), {});
    size_t end = data.rfind('\n');
    size_t keep = end == std::string::npos ? 0 : end + 1;
    if (keep < data.size()) {
      std::fprintf(stderr, "gale batch: %s ended in a torn line (%zu bytes); cut it, that request runs again\n",
                   path_.c_str(), data.size() - keep);
      if (::ftruncate(fd_, off_t(keep)) != 0) throw Error("cannot repair " + path_ + ": " + errno_text());
      ::fdatasync(fd_);
    }
    size_t pos = 0;
    int64_t line = 0;
    while (pos < keep) {
      size_t nl = data.find('\n', pos);
      ++line;
      std::string_view l(data.data() + pos, nl - pos);
      pos = nl + 1;
      if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      json j = json::parse(l, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("custom_id") && j["custom_id"].is_string())
        done.insert(j["custom_id"].get<std::string>());
      else
        std::fprintf(stderr, "gale batch: %s line %lld is not a result; ignored\n", path_.c_str(), (long long)line);
    }
    return done;
  }

  void append(std::string line) {
    line += '\n';
    size_t off = 0;
    while (off < line.size()) {  // one write() in practice; a short write only on a full disk
      ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw Error("cannot write " + path_ + ": " + errno_text());
      off += size_t(n);
    }
    auto now = clock_type::now();
    if (now - last_sync_ > std::chrono::seconds(1)) {
      ::fdatasync(fd_);
      last_sync_ = now;
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  clock_type::time_point last_sync_ = clock_type::now();
};

// The progress line on stderr: redrawn in place on a terminal, a plain line every 10 s otherwise.
class Progress {
 public:
  Progress(int64_t total, int64_t already) : total_(total), already_(already), tty_(::isatty(2)) {}
  void update(int64_t done_now, int64_t gen_tokens, bool final = false) {
    auto now = clock_type::now();
    const double since_draw = std::chrono::duration<double>(now - last_).count();
    if (!final && since_draw < (tty_ ? 0.2 : 10.0)) return;
    last_ = now;
    const double el = std::chrono::duration<double>(now - start_).count();
    const int64_t done = already_ + done_now;
    const double tps = el > 0 ? double(gen_tokens) / el : 0.0;
    const double rps = el > 0 ? double(done_now) / el : 0.0;
    const int64_t left = total_ - done;
    char eta[32] = "--:--";
    if (rps > 0 && left > 0) {
      long s = long(double(left) / rps);
      std::snprintf(eta, sizeof eta, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    } else if (left <= 0) {
      std::snprintf(eta, sizeof eta, "0:00:00");
    }
    if (tty_) {
      const int width = 30;
      int fill = total_ > 0 ? int(double(width) * double(done) / double(total_)) : width;
      std::string bar(size_t(fill), '#');
      bar.resize(size_t(width), '.');
      std::fprintf(stderr, "\r[%s] %lld/%lld requests  %.1f tok/s  ETA %s ", bar.c_str(), (long long)done,
                   (long long)total_, tps, eta);
      if (final) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "gale batch: %lld/%lld requests done, %.1f tok/s, ETA %s\n", (long long)done,
                   (long long)total_, tps, eta);
    }
    std::fflush(stderr);
  }

 private:
  int64_t total_, already_;
  bool tty_;
  clock_type::time_point start_ = clock_type::now(), last_ = clock_type::time_point{};
};

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

class BatchJob {
 public:
  BatchJob(const BatchOptions& o) : o_(o) {}

  int run();

 private:
  // Turns a body into engine parameters; throws gale::Error for invalid requests.
  RequestParams make_params(const Pending& p);
  ojson result_body(const Running& r, const RequestOutput& fin);
  void write_ok(const Running& r, const RequestOutput& fin);
  void write_error(const Pending& p, const std::string& code, const std::string& msg);
  std::string token_text(int32_t id) const;

  const BatchOptions& o_;
  std::string model_dir_, model_name_;
  LoadedModel lm_;
  std::unique_ptr<Tokenizer> tok_;
  std::optional<ChatTemplate> chat_;
  std::string chat_error_;
  bool chat_loaded_ = false;
  GenerationDefaults gd_;
  std::unique_ptr<ResultFile> out_;
  int64_t written_ = 0;
};

std::string BatchJob::token_text(int32_t id) const {
  if (!tok_) return std::to_string(id);
  int32_t one[1] = {id};
  return tok_->decode(one, false);
}

RequestParams BatchJob::make_params(const Pending& p) {
  const json& b = p.body;
  const ModelConfig& cfg = lm_.model->config();
  RequestParams rp;
  auto num = [&](const char* k) -> std::optional<double> {
    if (!b.contains(k) || b[k].is_null()) return std::nullopt;
    if (!b[k].is_number()) throw Error(std::string("'") + k + "' must be a number");
    return b[k].get<double>();
  };
  if (p.chat) {
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
      throw Error("'messages' must be a non-empty array");
    if (!tok_) throw Error("chat requests need the model's tokenizer.json");
    if (!chat_loaded_) {
      chat_loaded_ = true;
      try {
        chat_ = ChatTemplate::load(model_dir_);
      } catch (const Error& e) {
        chat_error_ = e.what();
      }
    }
    if (!chat_) throw Error("the model has no usable chat template: " + chat_error_);
    ojson msgs = ojson::parse(b["messages"].dump());
    ojson tools = b.contains("tools") ? ojson::parse(b["tools"].dump()) : ojson();
    std::string text = chat_->render(msgs, tools, /*add_generation_prompt=*/true);
    rp.prompt = tok_->encode(text, /*add_special_tokens=*/false);
  } else {
    if (!b.contains("prompt")) throw Error("'prompt' is required");
    const json& pr = b["prompt"];
    if (pr.is_string()) {
      if (!tok_) throw Error("text prompts need the model's tokenizer.json; give token ids");
      rp.prompt = tok_->encode(pr.get<std::string>(), /*add_special_tokens=*/true);
    } else if (pr.is_array() && !pr.empty() && pr[0].is_number_integer()) {
      for (const json& v : pr) {
        if (!v.is_number_integer()) throw Error("'prompt' token ids must be integers");
        rp.prompt.push_back(v.get<int32_t>());
      }
    } else if (pr.is_array() && pr.size() == 1 && pr[0].is_string() && tok_) {
      rp.prompt = tok_->encode(pr[0].get<std::string>(), true);
    } else {
      throw Error("'prompt' must be a string or an array of token ids (one prompt per request)");
    }
  }
  if (rp.prompt.empty()) throw Error("the prompt is empty");
  if (auto n = num("n"); n && *n != 1) throw Error("only n = 1 is supported");
  if (b.value("echo", false)) throw Error("'echo' is not supported");
  std::optional<double> mt = num("max_tokens");
  if (p.chat && !mt) mt = num("max_completion_tokens");
  const int64_t ctx = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096;
  if (mt) rp.max_tokens = int64_t(*mt);
  else rp.max_tokens = p.chat ? std::max<int64_t>(1, ctx - int64_t(rp.prompt.size())) : 16;  // OpenAI's defaults
  // Sampling: the body wins; otherwise generation_config.json's defaults (as gale generate).
  SamplingParams& sp = rp.sampling;
  sp.temperature = float(num("temperature").value_or(gd_.do_sample ? gd_.temperature : 0.0));
  sp.top_p = float(num("top_p").value_or(gd_.do_sample ? gd_.top_p : 1.0));
  sp.top_k = int(num("top_k").value_or(gd_.do_sample ? gd_.top_k : 0));
  sp.min_p = float(num("min_p").value_or(gd_.do_sample ? gd_.min_p : 0.0));
  sp.repetition_penalty = float(num("repetition_penalty").value_or(gd_.repetition_penalty));
  sp.presence_penalty = float(num("presence_penalty").value_or(0.0));
  sp.frequency_penalty = float(num("frequency_penalty").value_or(0.0));
  // No seed given: one derived from the custom_id, so a resumed job samples as a clean run would.
  if (b.contains("seed") && !b["seed"].is_null()) {
    if (!b["seed"].is_number_integer()) throw Error("'seed' must be an integer");
    sp.seed = b["seed"].get<uint64_t>();
  } else {
    sp.seed = fnv1a(p.custom_id);
  }
  if (b.contains("stop") && !b["stop"].is_null()) {
    if (b["stop"].is_string()) rp.stop.push_back(b["stop"].get<std::string>());
    else if (b["stop"].is_array())
      for (const json& s : b["stop"]) {
        if (!s.is_string()) throw Error("'stop' must be a string or an array of strings");
        rp.stop.push_back(s.get<std::string>());
      }
    else throw Error("'stop' must be a string or an array of strings");
  }
  rp.ignore_eos = b.value("ignore_eos", false);
  rp.eos_ids = gd_.eos_token_ids;
  if (p.chat) {
    if (b.value("logprobs", false)) rp.top_logprobs = int(num("top_logprobs").value_or(0));
  } else if (auto lp = num("logprobs")) {
    rp.top_logprobs = int(*lp);
  }
  if (rp.top_logprobs > 20) throw Error("top_logprobs must be <= 20");
  return rp;
}

ojson BatchJob::result_body(const Running& r, const RequestOutput& fin) {
  const int64_t n_gen = int64_t(r.ids.size());
  ojson usage = {{"prompt_tokens", r.prompt_tokens}, {"completion_tokens", n_gen},
                 {"total_tokens", r.prompt_tokens + n_gen},
                 {"prompt_tokens_details", {{"cached_tokens", fin.cached_prompt_tokens}}}};
  const std::string id_base = hex(fnv1a(r.req.custom_id));
  const int64_t created = int64_t(std::time(nullptr));
  ojson lp = nullptr;
  if (!r.logprobs.empty()) {
    if (r.req.chat) {
      ojson content = ojson::array();
      for (const TokenLogprob& t : r.logprobs) {
        ojson top = ojson::array();
        for (auto& [id, l] : t.top) top.push_back({{"token", token_text(id)}, {"logprob", l}});
        content.push_back({{"token", token_text(t.id)}, {"logprob", t.logprob}, {"top_logprobs", top}});
      }
      lp = {{"content", content}};
    } else {
      ojson tokens = ojson::array(), token_lp = ojson::array(), top = ojson::array(), offs = ojson::array();
      size_t off = 0;
      for (const TokenLogprob& t : r.logprobs) {
        std::string s = token_text(t.id);
        tokens.push_back(s);
        token_lp.push_back(t.logprob);
        ojson m = ojson::object();
        for (auto& [id, l] : t.top) m[token_text(id)] = l;
        top.push_back(m);
        offs.push_back(off);
        off += s.size();
      }
      lp = {{"tokens", tokens}, {"token_logprobs", token_lp}, {"top_logprobs", top}, {"text_offset", offs}};
    }
  }
  ojson choice;
  if (r.req.chat) {
    choice = {{"index", 0}, {"message", {{"role", "assistant"}, {"content", r.text}}}, {"logprobs", lp},
              {"finish_reason", fin.finish_reason}};
    return {{"id", "chatcmpl-" + id_base}, {"object", "chat.completion"}, {"created", created},
            {"model", model_name_}, {"choices", ojson::array({choice})}, {"usage", usage}};
  }
  choice = {{"index", 0}, {"text", r.text}, {"logprobs", lp}, {"finish_reason", fin.finish_reason}};
  return {{"id", "cmpl-" + id_base}, {"object", "text_completion"}, {"created", created},
          {"model", model_name_}, {"choices", ojson::array({choice})}, {"usage", usage}};
}

void BatchJob::write_ok(const Running& r, const RequestOutput& fin) {
  ojson line = {{"id", "batch_req_" + hex(fnv1a("r" + r.req.custom_id))},
                {"custom_id", r.req.custom_id},
                {"response", {{"status_code", 200}, {"request_id", "req_" + hex(fnv1a(r.req.custom_id))},
                              {"body", result_body(r, fin)}}},
                {"error", nullptr}};
  out_->append(line.dump(-1, ' ', false, ojson::error_handler_t::replace));
  ++written_;
}

void BatchJob::write_error(const Pending& p, const std::string& code, const std::string& msg) {
  ojson line = {{"id", "batch_req_" + hex(fnv1a("r" + p.custom_id))},
                {"custom_id", p.custom_id},
                {"response", nullptr},
                {"error", {{"code", code}, {"message", msg}}}};
  out_->append(line.dump(-1, ' ', false, ojson::error_handler_t::replace));
  ++written_;
}

int BatchJob::run() {
  model_dir_ = resolve_model(o_.model);
  // Results first: a bad output path fails before the model loads.
  out_ = std::make_unique<ResultFile>(o_.output);
  std::unordered_set<std::string> done = out_->scan_and_repair();

  // Input: every line parsed now (line numbers for the errors file); bodies checked at admission.
  std::ifstream in(o_.input, std::ios::binary);
  if (!in) throw Error("cannot open " + o_.input);
  const std::string err_path = o_.errors.empty() ? o_.output + ".errors.jsonl" : o_.errors;
  std::ofstream errs;
  int64_t num_bad = 0;
  auto bad_line = [&](int64_t line, const std::string& msg, const std::string& custom_id = "") {
    if (!errs.is_open()) {
      errs.open(err_path, std::ios::binary | std::ios::trunc);
      if (!errs) throw Error("cannot open " + err_path);
    }
    ojson e = {{"line", line}};
    if (!custom_id.empty()) e["custom_id"] = custom_id;
    e["error"] = msg;
    errs << e.dump(-1, ' ', false, ojson::error_handler_t::replace) << '\n';
    errs.flush();
    ++num_bad;
  };
  std::deque<Pending> queue;
  std::unordered_set<std::string> seen;
  int64_t total = 0, resumed = 0;
  std::string text;
  for (int64_t line_no = 1; std::getline(in, text); ++line_no) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      bad_line(line_no, "not a JSON object");
      continue;
    }
    if (!j.contains("custom_id") || !j["custom_id"].is_string() || j["custom_id"].get<std::string>().empty()) {
      bad_line(line_no, "'custom_id' (a non-empty string) is required");
      continue;
    }
    Pending p;
    p.line = line_no;
    p.custom_id = j["custom_id"].get<std::string>();
    if (!seen.insert(p.custom_id).second) {
      bad_line(line_no, "duplicate custom_id", p.custom_id);
      continue;
    }
    if (j.contains("method") && j["method"] != "POST") {
      bad_line(line_no, "'method' must be POST", p.custom_id);
      continue;
    }
    if (!j.contains("body") || !j["body"].is_object()) {
      bad_line(line_no, "'body' (an object) is required", p.custom_id);
      continue;
    }
    std::string url = j.value("url", j["body"].contains("messages") ? "/v1/chat/completions" : "/v1/completions");
    if (url != "/v1/completions" && url != "/v1/chat/completions") {
      bad_line(line_no, "'url' must be /v1/completions or /v1/chat/completions", p.custom_id);
      continue;
    }
    p.chat = url == "/v1/chat/completions";
    p.body = std::move(j["body"]);
    ++total;
    if (done.count(p.custom_id)) {
      ++resumed;
      continue;
    }
    queue.push_back(std::move(p));
  }
  if (!errs.is_open()) std::filesystem::remove(err_path);  // no stale errors from an earlier run
  if (num_bad > 0)
    std::fprintf(stderr, "gale batch: %lld malformed input line(s), listed in %s\n", (long long)num_bad,
                 err_path.c_str());
  if (resumed > 0)
    std::fprintf(stderr, "gale batch: resuming: %lld of %lld requests already in %s\n", (long long)resumed,
                 (long long)total, o_.output.c_str());
  if (queue.empty()) {
    std::fprintf(stderr, "gale batch: nothing to do (%lld requests, all done)\n", (long long)total);
    return 0;
  }

  lm_ = load_model(model_dir_, backend_options(o_.model));
  model_name_ = lm_.synthetic ? lm_.source : std::filesystem::path(model_dir_).lexically_normal().filename().string();
  if (model_name_.empty()) model_name_ = std::filesystem::path(model_dir_).parent_path().filename().string();
  if (!lm_.synthetic && std::filesystem::exists(std::filesystem::path(model_dir_) / "tokenizer.json"))
    tok_ = Tokenizer::load(model_dir_);
  gd_ = lm_.synthetic ? GenerationDefaults{} : load_generation_defaults(model_dir_, lm_.model->config());
  Engine engine(*lm_.model, tok_.get(), engine_config(o_.engine));

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::unordered_map<uint64_t, Running> running;
  Progress progress(total, resumed);
  int64_t done_now = 0, gen_tokens = 0;
  // Keep the scheduler's queue a little deeper than what can run, tokenizing lazily.
  const size_t depth = size_t(o_.engine.max_num_seqs) * 2;
  while (g_signal == 0 && (!queue.empty() || engine.has_unfinished())) {
    while (!queue.empty() && running.size() < depth) {
      Pending p = std::move(queue.front());
      queue.pop_front();
      try {
        RequestParams rp = make_params(p);
        Running r;
        r.prompt_tokens = int64_t(rp.prompt.size());
        uint64_t id = engine.add_request(std::move(rp));
        r.req = std::move(p);
        running.emplace(id, std::move(r));
      } catch (const Error& e) {
        write_error(p, "invalid_request", e.what());
        ++done_now;
      }
    }
    if (!engine.has_unfinished()) continue;
    for (RequestOutput& o : engine.step()) {
      auto it = running.find(o.id);
      if (it == running.end()) continue;
      Running& r = it->second;
      r.ids.insert(r.ids.end(), o.new_ids.begin(), o.new_ids.end());
      r.text += o.new_text;
      r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      gen_tokens += int64_t(o.new_ids.size());
      if (o.finished) {
        write_ok(r, o);
        ++done_now;
        running.erase(it);
      }
    }
    progress.update(done_now, gen_tokens);
  }
  progress.update(done_now, gen_tokens, /*final=*/true);
  EngineStats st = engine.stats();
  std::fprintf(stderr, "gale batch: %lld results written to %s; prefix cache %lld/%lld prompt tokens, %lld preemptions\n",
               (long long)written_, o_.output.c_str(), (long long)st.prefix_cache_hit_tokens,
               (long long)st.prefix_cache_queried_tokens, (long long)st.preemptions);
  if (g_signal != 0) {
    std::fprintf(stderr, "gale batch: interrupted by signal %d with %lld requests unfinished; rerun the same command "
                 "to resume\n", int(g_signal), (long long)(queue.size() + running.size()));
    return 128 + int(g_signal);
  }
  return 0;
}

CommandRegistrar reg{15, [](CLI::App& root) {
  auto o = std::make_shared<BatchOptions>();
  CLI::App* sub = root.add_subcommand(
      "batch", "Run a file of OpenAI batch requests (JSONL) and append one result line per request; rerun to resume");
  add_model_options(sub, o->model);
  add_engine_options(sub, o->engine);
  sub->add_option("--input", o->input, "Requests: one {custom_id, method, url, body} per line")->required();
  sub->add_option("--output", o->output, "Results (JSONL), appended; custom_ids already there are skipped")->required();
  sub->add_option("--errors", o->errors, "Malformed input lines with their line numbers (default OUTPUT.errors.jsonl)");
  sub->callback([o] {
    int code;
    {
      BatchJob job(*o);  // closes (and syncs) the results before exiting
      code = job.run();
    }
    if (code != 0) {
      std::fflush(nullptr);
      std::exit(code);
    }
  });
}};

}  // namespace
}  // namespace gale::cli
