// gale bench serve: load generator for OpenAI-compatible servers (src/serve/bench_serve.h).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>

#include "cli/command.h"
#include "core/error.h"
#include "serve/bench_serve.h"

namespace gale::cli {
namespace {

struct BenchServeOptions {
  serve::BenchServeConfig cfg;
  std::string rates = "inf";
  std::string json_out, html_out;
  bool no_ignore_eos = false;
};

std::vector<double> parse_rates(const std::string& s) {
  std::vector<double> out;
  size_t p = 0;
  while (p <= s.size()) {
    size_t e = s.find(',', p);
    std::string t = s.substr(p, e == std::string::npos ? std::string::npos : e - p);
    if (t == "inf") {
      out.push_back(std::numeric_limits<double>::infinity());
    } else {
      char* end = nullptr;
      double v = std::strtod(t.c_str(), &end);
      if (t.empty() || *end != '\0' || !(v > 0)) throw Error("--request-rate: expected positive numbers or inf, got '" + t + "'");
      out.push_back(v);
    }
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return out;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  if (!f || !(f << text)) throw Error("cannot write " + path);
}

CommandRegistrar reg{41, [](CLI::App& root) {
  // A mode of `gale bench`: `gale bench serve ...`.
  CLI::App* bench = root.get_subcommand("bench");
  auto o = std::make_shared<BenchServeOptions>();
  CLI::App* sub = bench->add_subcommand("serve", "Load-test an OpenAI-compatible server: throughput, TTFT/TPOT/ITL percentiles");
  auto& c = o->cfg;
  sub->add_option("--base-url", c.base_url, "Server URL (default http://127.0.0.1:8000)");
  sub->add_option("--endpoint", c.endpoint, "completions or chat")->check(CLI::IsMember({"completions", "chat"}));
  sub->add_option("--model", c.model, "Model name (default: the first of GET /v1/models)");
  sub->add_option("--api-key", c.api_key, "Bearer key (default $GALE_API_KEY or $OPENAI_API_KEY)");
  sub->add_option("--num-prompts", c.num_prompts, "Requests per run (default 100)")->check(CLI::PositiveNumber);
  sub->add_option("--request-rate", o->rates, "Poisson arrival rates in req/s, comma-separated; inf = all at once (default inf)");
  sub->add_option("--max-concurrency", c.max_concurrency, "Requests in flight at most (default unbounded)")->check(CLI::NonNegativeNumber);
  sub->add_option("--input-len", c.input_len, "Synthetic prompt length in tokens (approx., default 128)")->check(CLI::PositiveNumber);
  sub->add_option("--output-len", c.output_len, "Output tokens per request (default 64)")->check(CLI::PositiveNumber);
  sub->add_option("--range-ratio", c.range_ratio, "Lengths uniform in len x [1-r, 1+r] (default 0)")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--dataset", c.dataset, "JSONL prompts: {\"prompt\": ..., \"output_len\": N} or {\"messages\": [...]}");
  sub->add_option("--seed", c.seed, "Seed for prompts and arrivals (default 0)");
  sub->add_option("--timeout", c.timeout_s, "Seconds per request (default 600)")->check(CLI::PositiveNumber);
  auto* eos = sub->add_flag("--no-ignore-eos", o->no_ignore_eos, "Let requests stop at end-of-sequence (default: ignore_eos, fixed lengths)");
  sub->add_option("--json", o->json_out, "Write the results as JSON to this file ('-' = stdout)");
  sub->add_option("--html", o->html_out, "Write an HTML report with plots to this file");
  (void)eos;
  sub->callback([o] {
    auto& c = o->cfg;
    c.ignore_eos = !o->no_ignore_eos;
    c.rates = parse_rates(o->rates);
    if (c.api_key.empty())
      for (const char* k : {"GALE_API_KEY", "OPENAI_API_KEY"})
        if (const char* v = std::getenv(k); v && *v) {
          c.api_key = v;
          break;
        }
    auto runs = serve::run_bench_serve(c);
    if (o->json_out != "-") serve::print_bench_table(runs);
    std::string j = serve::bench_json(c, runs).dump(2);
    if (o->json_out == "-") std::printf("%s\n", j.c_str());
    else if (!o->json_out.empty()) write_file(o->json_out, j + "\n");
    if (!o->html_out.empty()) write_file(o->html_out, serve::bench_html(c, runs));
    int failed = 0;
    for (auto& r : runs) failed += r.failed;
    if (failed > 0) throw Error(std::to_string(failed) + " requests failed");
    // `gale bench` has its own callback, which CLI11 would run after this one: stop here.
    throw CLI::Success();
  });
}};

}  // namespace
}  // namespace gale::cli
