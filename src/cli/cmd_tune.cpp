// gale tune: measures configurations of the model on this machine (weight format, KV cache dtype,
// pruning, speculation, batch limits; the search is cli/tune_sweep.h), prints the Pareto table and
// writes OUT/report.html, OUT/pareto.json, OUT/gale.toml (cli/tune_report.h). Rerunning with the
// same --out goes on where an interrupted run stopped (cli/tune_store.h).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "api/engine_args.h"
#include "cli/command.h"
#include "cli/tune_report.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

namespace fs = std::filesystem;

struct TuneOptions {
  std::string model;
  std::string max_quality_loss = "5%";
  std::string workload = "batch";
  double budget_minutes = 8;
  std::string memory_limit;
  std::string out;
  bool json = false;
  std::string eval_file;
  int64_t eval_tokens = 1024;
  int64_t ctx = 256;
  int64_t requests = 0;  // 0: the workload's
  int64_t gen = 0;       // 0: the workload's
  int reps = 3;
  int64_t max_points = 0;
  std::string draft;
  int threads = 0;
};

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(std::string("cannot read ") + what + " " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double parse_percent(std::string s) {
  if (!s.empty() && s.back() == '%') s.pop_back();
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v) || v < 0)
    throw Error("--max-quality-loss must be a percentage >= 0 such as 5% or 0.5 (got '" + s + "')");
  return v;
}

bool same_dir(const std::string& a, const std::string& b) {
  std::error_code ea, eb;
  const auto ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

// Prompts of `len` tokens cut from the stream, starting at `from` (wrapping around).
std::vector<std::vector<int32_t>> cut_prompts(const std::vector<int32_t>& stream, size_t from, int64_t n, int64_t len) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < len; ++t) p.push_back(stream[(from + size_t(i * len + t)) % stream.size()]);
    out.push_back(std::move(p));
  }
  return out;
}

// A prompts file: one prompt a line, as text or as a JSON object with a "prompt" string.
std::vector<std::vector<int32_t>> file_prompts(const std::string& path, const Tokenizer& tok) {
  std::istringstream in(read_text(path, "--workload"));
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string text = line;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) {
      if (!j.contains("prompt") || !j["prompt"].is_string())
        throw Error("--workload " + path + ": a JSON line needs a \"prompt\" string");
      text = j["prompt"].get<std::string>();
    }
    std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
    if (ids.empty()) ids.push_back(0);
    out.push_back(std::move(ids));
  }
  if (out.empty()) throw Error("--workload " + path + " has no prompts");
  return out;
}

void run_tune(const TuneOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  const std::string model_dir = o.model.empty() ? default_model_dir() : o.model;
  if (!fs::exists(fs::path(model_dir) / "config.json") || !fs::exists(fs::path(model_dir) / "tokenizer.json"))
    throw Error("tune needs a model folder with config.json and tokenizer.json (got '" + model_dir + "')");
  TuneLimits limits;
  limits.max_quality_loss_pct = parse_percent(o.max_quality_loss);
  if (!o.memory_limit.empty()) limits.memory_limit_bytes = double(parse_bytes(o.memory_limit));

  // The draft: --draft, else the bundled pair's.
  std::string draft = o.draft;
  if (draft.empty()) {
    const fs::path bundled = fs::path(model_dir).parent_path() / "draft";
    if (same_dir(model_dir, default_model_dir()) && fs::exists(bundled / "config.json")) draft = bundled.string();
  } else if (!fs::exists(fs::path(draft) / "config.json")) {
    throw Error("--draft " + draft + ": no model (config.json) there");
  }

  // The evaluation text: --eval-file, else the bundled validation text beside the model.
  std::string eval_file = o.eval_file;
  if (eval_file.empty()) {
    const fs::path bundled = fs::path(model_dir).parent_path() / "data" / "validation-head.txt";
    if (!fs::exists(bundled)) throw Error("tune scores quality on a text: give --eval-file FILE");
    eval_file = bundled.string();
  }
  auto tok = Tokenizer::load(model_dir);
  const std::vector<int32_t> stream = tok->encode(read_text(eval_file, "--eval-file"), /*add_special_tokens=*/true);
  if (int64_t(stream.size()) < 16) throw Error("--eval-file " + eval_file + " is too short");
  const size_t n_eval = std::min(stream.size(), size_t(std::max<int64_t>(o.eval_tokens, 16)));
  std::vector<int32_t> eval_ids(stream.begin(), stream.begin() + ptrdiff_t(n_eval));
  // What follows the scored text calibrates pruning and makes the prompts (wrapping around).
  std::vector<int32_t> rest(stream.begin() + ptrdiff_t(n_eval), stream.end());
  if (rest.size() < 64) rest = stream;
  std::vector<int32_t> calib(rest.begin(), rest.begin() + ptrdiff_t(std::min<size_t>(rest.size(), 2048)));

  TuneWorkload w;
  w.name = o.workload;
  if (o.workload == "chat") {
    w.objective = TuneObjective::Latency;
    w.gen = o.gen > 0 ? o.gen : 64;
    w.prompts = cut_prompts(rest, 0, o.requests > 0 ? o.requests : 8, 64);
  } else if (o.workload == "batch") {
    w.objective = TuneObjective::Throughput;
    w.gen = o.gen > 0 ? o.gen : 32;
    w.prompts = cut_prompts(rest, 0, o.requests > 0 ? o.requests : 32, 128);
  } else {
    w.objective = TuneObjective::Throughput;
    w.gen = o.gen > 0 ? o.gen : 32;
    w.prompts = file_prompts(o.workload, *tok);
    if (o.requests > 0 && int64_t(w.prompts.size()) > o.requests) w.prompts.resize(size_t(o.requests));
  }

  fs::create_directories(o.out);
  // What makes two measurements comparable: a point measured under other settings is measured again.
  nlohmann::json settings = {{"model", fs::absolute(model_dir).lexically_normal().string()},
                             {"draft", draft.empty() ? "" : fs::absolute(draft).lexically_normal().string()},
                             {"workload", w.name},
                             {"requests", w.prompts.size()},
                             {"gen", w.gen},
                             {"eval_file", fs::absolute(eval_file).lexically_normal().string()},
                             {"eval_tokens", eval_ids.size()},
                             {"ctx", o.ctx},
                             {"reps", o.reps},
                             {"threads", num_threads()}};
  TunePointStore store((fs::path(o.out) / "points.jsonl").string(), settings);
  store.load();
  if (store.dropped() > 0)
    std::fprintf(stderr, "gale tune: %lld point(s) in %s/points.jsonl were measured with other settings; measuring again\n",
                 (long long)store.dropped(), o.out.c_str());

  TuneMeter meter(model_dir, draft, eval_ids, o.ctx, w, o.reps);
  TuneSweepOptions so;
  so.model_dir = model_dir;
  so.out_dir = o.out;
  so.limits = limits;
  so.budget_s = o.budget_minutes * 60.0;
  so.max_points = o.max_points;
  so.calib_tokens = calib;
  const TuneSweepResult r = run_tune_sweep(so, meter, store);

  TuneReportInfo info;
  info.model_dir = model_dir;
  info.draft_dir = draft;
  info.out_dir = o.out;
  info.workload = w.name;
  info.objective = w.objective;
  info.limits = limits;
  info.reference_perplexity = meter.reference_perplexity();
  info.budget_s = so.budget_s;
  write_tune_outputs(info, r);
  if (o.json)
    std::printf("%s\n", tune_report_json(info, r).dump(2).c_str());
  else
    print_tune_table(info, r);
  if (!r.chosen) throw Error("no measured configuration is within the limits (--max-quality-loss, --memory-limit)");
}

CommandRegistrar reg{28, [](CLI::App& root) {
  auto o = std::make_shared<TuneOptions>();
  CLI::App* sub = root.add_subcommand(
      "tune", "Measure weight formats, KV cache dtypes, pruning, speculation and batch limits on this machine; write "
              "the Pareto front (report.html, pareto.json) and the chosen configuration (gale.toml)");
  sub->add_option("-m,--model", o->model, "Model folder (default: the bundled model)");
  sub->add_option("--out", o->out, "Output folder; rerun with the same folder to resume")->required();
  sub->add_option("--max-quality-loss", o->max_quality_loss,
                  "Largest perplexity increase over the unmodified model the choice may have (default 5%)")
      ->type_name("P%");
  sub->add_option("--workload", o->workload,
                  "chat (8 requests of 64 + 64 tokens, choose by p95 latency), batch (32 of 128 + 32, choose by "
                  "throughput; the default) or FILE (one prompt a line, text or {\"prompt\": ...}; throughput)")
      ->type_name("chat|batch|FILE");
  sub->add_option("--budget-minutes", o->budget_minutes,
                  "No configuration starts when it would end past this (default 8); the report is written anyway")
      ->check(CLI::PositiveNumber);
  sub->add_option("--memory-limit", o->memory_limit, "Largest weights + KV cache the choice may hold (2GiB, 512MiB)")
      ->type_name("SIZE");
  sub->add_flag("--json", o->json, "Print pareto.json's object instead of the table");
  sub->add_option("--eval-file", o->eval_file, "Text quality is scored on (default: the bundled validation text)");
  sub->add_option("--eval-tokens", o->eval_tokens, "Tokens of it scored (default 1024)")->check(CLI::Range(16, 1 << 24));
  sub->add_option("--ctx", o->ctx, "Window of the perplexity evaluation (default 256)")->check(CLI::Range(2, 1 << 20));
  sub->add_option("--requests", o->requests, "Requests of the workload (default: the workload's)")->check(CLI::Range(1, 100000));
  sub->add_option("--gen", o->gen, "Tokens generated per request (default: the workload's)")->check(CLI::Range(1, 100000));
  sub->add_option("--reps", o->reps, "Runs of the workload per configuration, the best kept (default 3)")->check(CLI::Range(1, 100));
  sub->add_option("--max-points", o->max_points, "Stop after this many configurations (measured or kept; for tests)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--draft", o->draft, "Draft model for speculative decoding (default: the bundled draft with the bundled model)");
  sub->add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->callback([o] { run_tune(*o); });
}};

}  // namespace
}  // namespace gale::cli
