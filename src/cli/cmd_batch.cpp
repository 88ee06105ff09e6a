// gale batch: offline jobs in the OpenAI batch format. Every input line is one request
// ({"custom_id", "method", "url", "body"}); every output line one result
// ({"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}) or one
// recorded error ({..., "response": null, "error": {"code", "message"}}). The lines and bodies are
// parsed and validated by serve/openai_batch.h, with the server's own rules.
//
// Durability: each result is appended as one whole line by a single write() on an O_APPEND
// descriptor as soon as its request finishes. A write() that returned is in the page cache, so
// kill -9 (or SIGINT/SIGTERM, which finish the current step first) loses no completed result.
// fdatasync runs at most once a second and at exit: it only guards against a machine crash,
// where up to a second of results may be lost or the last line torn; rerunning repairs the tail
// (cuts the torn line) and recomputes whatever is missing. Rerunning the same command resumes:
// a custom_id counts as done only where the output holds a whole result or recorded error line
// for it and the input has it; anything else in the output is ignored (and the request runs).
// Since resume reads the input again and appends to the output, the input must be a regular
// file, and the input, output and errors file three different files.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <unordered_set>

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
#include "serve/openai_batch.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

using ojson = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;
using serve::ApiError;
using serve::BatchLine;

volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) { g_signal = sig; }

struct BatchOptions {
  ModelOptions model;
  EngineOptions engine;
  ParallelOptions parallel;
  std::string input, output, errors;
  std::string config;  // --config FILE (cli/config_options.h)
  KvEventsOptions kv_events;
};

// A request read from the input, not yet handed to the engine.
struct Pending {
  int64_t line = 0;
  BatchLine req;
};

struct Running {
  Pending p;
  serve::ApiRequest api;
  serve::ChoiceState choice;
};

std::string errno_text() { return std::strerror(errno); }

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// The input, opened once and read line by line.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw Error("cannot open " + path + ": " + errno_text());
    if (::fstat(fd, &st_) != 0 || !S_ISREG(st_.st_mode)) {
      ::close(fd);
      // A directory reads as empty; a FIFO or device cannot be read again to resume.
      throw Error("--input " + path + " is not a regular file");
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    f_ = ::fdopen(fd, "rb");
    if (!f_) {
      ::close(fd);
      throw Error("cannot open " + path + ": " + errno_text());
    }
  }
  ~InputFile() {
    std::free(buf_);
    if (f_) std::fclose(f_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  const struct stat& stat() const { return st_; }
  // The next line without its '\n'; false at the end.
  bool next(std::string& line) {
    ssize_t n = ::getline(&buf_, &cap_, f_);
    if (n < 0) {
      if (std::ferror(f_)) throw Error("cannot read " + path_ + ": " + errno_text());
      return false;
    }
    line.assign(buf_, size_t(n));
    if (!line.empty() && line.back() == '\n') line.pop_back();
    return true;
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  char* buf_ = nullptr;
  size_t cap_ = 0;
  struct stat st_ {};
};

// The output file, append-only. Repairs a torn last line left by a crash.
class ResultFile {
 public:
  explicit ResultFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error("cannot open " + path + ": " + errno_text());
    if (::fstat(fd_, &st_) != 0 || !S_ISREG(st_.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      throw Error("--output " + path + " is not a regular file");
    }
  }
  ~ResultFile() {
    if (fd_ >= 0) {
      ::fdatasync(fd_);
      ::close(fd_);
    }
  }
  ResultFile(const ResultFile&) = delete;
  ResultFile& operator=(const ResultFile&) = delete;

  const struct stat& stat() const { return st_; }

  // custom_ids of the input that have a whole result (or recorded error) line; cuts an
  // incomplete last line.
  std::unordered_set<std::string> scan_and_repair(const std::unordered_set<std::string>& inputs) {
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
    int64_t line = 0, foreign = 0;
    while (pos < keep) {
      size_t nl = data.find('\n', pos);
      ++line;
      std::string_view l(data.data() + pos, nl - pos);
      pos = nl + 1;
      if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      std::optional<std::string> id = serve::recorded_custom_id(l);
      if (!id)
        std::fprintf(stderr, "gale batch: %s line %lld is not a result; ignored\n", path_.c_str(), (long long)line);
      else if (!inputs.count(*id))
        ++foreign;
      else
        done.insert(std::move(*id));
    }
    if (foreign > 0)
      std::fprintf(stderr, "gale batch: %s has %lld result(s) for custom_ids not in the input; ignored\n",
                   path_.c_str(), (long long)foreign);
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
  struct stat st_ {};
  clock_type::time_point last_sync_ = clock_type::now();
};

// The errors file may not exist yet; where it does, it must be neither the input nor the output
// (it is truncated, or removed when a run finds no malformed line).
void check_errors_path(const std::string& path, const struct stat& input, const struct stat& output) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  if (!S_ISREG(st.st_mode)) throw Error("--errors " + path + " is not a regular file");
  if (same_file(st, input)) throw Error("--errors " + path + " is the input file");
  if (same_file(st, output)) throw Error("--errors " + path + " is the output file");
}

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

class BatchJob {
 public:
  BatchJob(const BatchOptions& o) : o_(o) {}

  int run();

 private:
  // Records a request that cannot run (invalid body, refused by the engine) as its result line.
  void write_error(const Pending& p, const std::string& code, const std::string& msg);
  void admit(Engine& engine, Pending p, std::unordered_map<uint64_t, Running>& running);
  void load_chat_template(bool needed);

  const BatchOptions& o_;
  std::string model_dir_;
  LoadedModel lm_;
  LoadedModel draft_;  // speculative decoding's draft model, when one proposes
  std::unique_ptr<Tokenizer> tok_;
  std::optional<ChatTemplate> chat_;
  serve::ModelInfo info_;
  GenerationDefaults gd_;
  std::unique_ptr<ResultFile> out_;
  int64_t written_ = 0;
};

void BatchJob::write_error(const Pending& p, const std::string& code, const std::string& msg) {
  out_->append(serve::json_text(serve::batch_error_line(p.req.custom_id, code, msg)));
  ++written_;
}

void BatchJob::admit(Engine& engine, Pending p, std::unordered_map<uint64_t, Running>& running) {
  Running r;
  try {
    serve::BatchRequest br = serve::batch_request(p.req, info_, tok_.get(), chat_ ? &*chat_ : nullptr);
    r.choice.prompt_tokens = int64_t(br.params.prompt.size());
    r.api = std::move(br.api);
    uint64_t id = engine.add_request(std::move(br.params));
    r.p = std::move(p);
    running.emplace(id, std::move(r));
  } catch (const ApiError& e) {
    write_error(p, "invalid_request", e.what());
  } catch (const Error& e) {  // the engine's own validation (e.g. more KV blocks than the cache has)
    write_error(p, "invalid_request", e.what());
  } catch (const std::exception& e) {  // anything else fails this request, not the job
    write_error(p, "server_error", e.what());
  }
}

// Chat bodies need the model's template; its absence (or a template that does not parse) is
// said once here, and each chat request fails on its own with the parser's message.
void BatchJob::load_chat_template(bool needed) {
  if (lm_.synthetic) return;
  try {
    chat_ = ChatTemplate::load(model_dir_);
    // Tool calls and reasoning are parsed as the server does with its defaults (auto).
    info_.tool_format = serve::detect_tool_call_format(chat_->source());
    info_.reasoning_format = serve::detect_reasoning_format(chat_->source());
  } catch (const Error& e) {
    if (needed) std::fprintf(stderr, "gale batch: no chat template (%s); chat requests will fail\n", e.what());
  }
}

int BatchJob::run() {
  ParallelRun par(o_.parallel);  // --tp: this process's rank; outlives the engine
  model_dir_ = resolve_model(o_.model);
  if (par.follower()) {  // ranks 1..N-1 never touch the files: rank 0's steps, then exit 0
    if (!par.proceed(false)) return 0;
    lm_ = load_model(model_dir_, par.with_group(backend_options(o_.model)), load_options(o_.model));
    par.follow(*lm_.model);
    return 0;
  }
  // Files first: a bad input or output path fails before the model loads.
  InputFile in(o_.input);
  out_ = std::make_unique<ResultFile>(o_.output);
  // Reading the output as results of its own input would skip everything ("nothing to do").
  if (same_file(in.stat(), out_->stat())) throw Error("--input and --output are the same file (" + o_.output + ")");
  const std::string err_path = o_.errors.empty() ? o_.output + ".errors.jsonl" : o_.errors;
  check_errors_path(err_path, in.stat(), out_->stat());

  // Input: every line parsed now (line numbers for the errors file); bodies checked at admission.
  std::ofstream errs;
  int64_t num_bad = 0;
  // --dp: every replica reads the whole input; the first alone writes the errors file.
  const int replica = par.replica(), replicas = par.replicas();
  auto bad_line = [&](int64_t line, const std::string& msg, const std::string& custom_id = "") {
    if (replica != 0) {
      ++num_bad;
      return;
    }
    if (!errs.is_open()) {
      errs.open(err_path, std::ios::binary | std::ios::trunc);
      if (!errs) throw Error("cannot open " + err_path);
    }
    ojson e = {{"line", line}};
    if (!custom_id.empty()) e["custom_id"] = custom_id;
    e["error"] = msg;
    errs << serve::json_text(e) << '\n';
    errs.flush();
    ++num_bad;
  };
  std::vector<Pending> requests;
  std::unordered_set<std::string> seen;
  std::string text;
  for (int64_t line_no = 1; in.next(text); ++line_no) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Pending p;
    p.line = line_no;
    p.req = serve::parse_batch_line(text);
    if (!p.req.error.empty()) {
      bad_line(line_no, p.req.error, p.req.custom_id);
      continue;
    }
    if (!seen.insert(p.req.custom_id).second) {
      bad_line(line_no, "duplicate custom_id", p.req.custom_id);
      continue;
    }
    requests.push_back(std::move(p));
  }
  if (!errs.is_open() && replica == 0) std::filesystem::remove(err_path);  // no stale errors from an earlier run
  if (num_bad > 0)
    std::fprintf(stderr, "gale batch: %lld malformed input line(s), listed in %s\n", (long long)num_bad,
                 err_path.c_str());

  // --dp: the replicas append to one output file. The first cuts a torn last line before the
  // others read it, and nobody appends before every replica has read it (a line being written
  // could look torn to a reader and be cut).
  std::unordered_set<std::string> done;
  if (replicas > 1) {
    if (replica == 0) done = out_->scan_and_repair(seen);
    par.barrier();
    if (replica != 0) done = out_->scan_and_repair(seen);
    par.barrier();
    // Request k of the input's valid lines belongs to replica k % replicas: the same split on
    // every rerun of the same input, so a resumed job runs each missing request exactly once.
    std::vector<Pending> mine;
    for (size_t k = 0; k < requests.size(); ++k)
      if (int(k % size_t(replicas)) == replica) mine.push_back(std::move(requests[k]));
    requests = std::move(mine);
  } else {
    done = out_->scan_and_repair(seen);
  }
  int64_t resumed = 0;
  for (const Pending& p : requests) resumed += done.count(p.req.custom_id) ? 1 : 0;
  const int64_t total = int64_t(requests.size());
  std::deque<Pending> queue;
  bool any_chat = false;
  for (Pending& p : requests) {
    if (done.count(p.req.custom_id)) continue;
    any_chat |= p.req.endpoint == serve::Endpoint::Chat;
    queue.push_back(std::move(p));
  }
  requests.clear();
  if (resumed > 0)
    std::fprintf(stderr, "gale batch: resuming: %lld of %lld requests already in %s\n", (long long)resumed,
                 (long long)total, o_.output.c_str());
  if (!par.proceed(!queue.empty())) {
    std::fprintf(stderr, "gale batch: nothing to do (%lld requests, all done)\n", (long long)total);
    return 0;
  }

  lm_ = load_model(model_dir_, par.with_group(backend_options(o_.model)), load_options(o_.model));
  const ModelConfig& cfg = lm_.model->config();
  info_.name = lm_.synthetic ? lm_.source : std::filesystem::path(model_dir_).lexically_normal().filename().string();
  if (info_.name.empty()) info_.name = std::filesystem::path(model_dir_).parent_path().filename().string();
  info_.max_model_len = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096;
  info_.vocab_size = cfg.vocab_size;
  info_.check_model_name = false;
  if (!lm_.synthetic && std::filesystem::exists(std::filesystem::path(model_dir_) / "tokenizer.json"))
    tok_ = Tokenizer::load(model_dir_);
  load_chat_template(any_chat);
  // Sampling: the body wins; otherwise generation_config.json's defaults, greedy where it does
  // not sample (as gale generate; the server falls back to OpenAI's temperature 1 instead).
  gd_ = lm_.synthetic ? GenerationDefaults{} : load_generation_defaults(model_dir_, cfg);
  info_.eos_ids = gd_.eos_token_ids;
  SamplingParams& dflt = info_.defaults;
  dflt.temperature = gd_.do_sample ? gd_.temperature : 0.0f;
  dflt.top_p = gd_.do_sample ? gd_.top_p : 1.0f;
  dflt.top_k = gd_.do_sample ? gd_.top_k : 0;
  dflt.min_p = gd_.do_sample ? gd_.min_p : 0.0f;
  dflt.repetition_penalty = gd_.repetition_penalty;
  EngineConfig ec = engine_config(o_.engine, !lm_.model->backend().is_cpu());
  ec.followers = par.followers();
  if (std::string dd = apply_speculation(o_.engine, model_dir_, ec, &info_.speculative); !dd.empty())
    draft_ = load_model(dd, backend_options(o_.model), load_options(o_.model));
  if (par.replicas() > 1 && !o_.kv_events.endpoint.empty()) throw Error("--kv-events with --dp is not supported yet");
  std::unique_ptr<KvEventPublisher> kv_events = start_kv_events(o_.kv_events, ec);  // outlives the engine
  Engine engine(*lm_.model, tok_.get(), ec, draft_.model.get());

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::unordered_map<uint64_t, Running> running;
  Progress progress(total, resumed);
  int64_t done_now = 0, gen_tokens = 0;
  // Keep the scheduler's queue a little deeper than what can run, tokenizing lazily.
  const size_t depth = size_t(ec.max_num_seqs) * 2;
  while (g_signal == 0 && (!queue.empty() || engine.has_unfinished())) {
    while (!queue.empty() && running.size() < depth) {
      Pending p = std::move(queue.front());
      queue.pop_front();
      const int64_t before = written_;
      admit(engine, std::move(p), running);
      done_now += written_ - before;
    }
    if (!engine.has_unfinished()) continue;
    for (RequestOutput& o : engine.step()) {
      auto it = running.find(o.id);
      if (it == running.end()) continue;
      serve::ChoiceState& c = it->second.choice;
      c.ids.insert(c.ids.end(), o.new_ids.begin(), o.new_ids.end());
      c.text += o.new_text;
      c.logprobs.insert(c.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      gen_tokens += int64_t(o.new_ids.size());
      if (o.finished) {
        c.finished = true;
        c.finish_reason = o.finish_reason;
        c.completion_tokens = int64_t(c.ids.size());
        c.cached_tokens = o.cached_prompt_tokens;
        // A request the engine failed is recorded as an error line; the job goes on.
        out_->append(serve::json_text(
            serve::batch_finished_line(it->second.p.req.custom_id, it->second.api, info_, tok_.get(), c, o)));
        ++written_;
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
  if (ec.num_speculative_tokens > 0)
    std::fprintf(stderr, "gale batch: speculative %s: %lld verifies, acceptance rate %.3f, mean accepted length %.2f, "
                 "proposer %.2f s\n", info_.speculative.c_str(), (long long)st.spec_verifies, st.acceptance_rate(),
                 st.mean_accepted_length(), st.spec_proposer_seconds);
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
  add_parallel_options(sub, o->parallel);
  add_data_parallel_option(sub, o->parallel);
  sub->add_option("--input", o->input, "Requests: one {custom_id, method, url, body} per line")->required();
  sub->add_option("--output", o->output,
                  "Results (JSONL), appended; requests with a result (or recorded error) there are skipped")
      ->required();
  sub->add_option("--errors", o->errors, "Malformed input lines with their line numbers (default OUTPUT.errors.jsonl)");
  add_kv_events_options(sub, o->kv_events);
  add_config_option(sub, o->config);
  sub->callback([o, sub] {
    apply_config_file(sub, o->config);
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
