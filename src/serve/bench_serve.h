// `gale bench serve`: a load generator for any OpenAI-compatible endpoint (gale serve, vLLM,
// SGLang, ...). Poisson arrivals at one or more request rates, or a fixed concurrency; synthetic
// prompts with length distributions, or a JSONL dataset. Streams every request and reports
// throughput and TTFT / TPOT / ITL / end-to-end latency percentiles.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace gale::serve {

struct BenchServeConfig {
  std::string base_url = "http://127.0.0.1:8000";  // http only
  std::string endpoint = "completions";            // or "chat"
  std::string model;                               // "" = the first of GET /v1/models
  std::string api_key;
  int num_prompts = 100;
  std::vector<double> rates = {std::numeric_limits<double>::infinity()};  // requests/s; inf = all at once
  int max_concurrency = 0;                         // 0 = unbounded
  int input_len = 128, output_len = 64;            // synthetic prompts: mean lengths (tokens)
  double range_ratio = 0.0;                        // lengths uniform in [len (1 - r), len (1 + r)]
  std::string dataset;                             // JSONL: {"prompt"|"messages", "output_len"?}
  uint64_t seed = 0;
  bool ignore_eos = true;                          // make every request produce its output_len
  double timeout_s = 600;
};

struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
};

struct BenchRun {
  std::string model;            // as sent (resolved from /v1/models when not given)
  double rate = 0;              // asked (inf for all at once)
  int max_concurrency = 0;
  int completed = 0, failed = 0;
  std::string first_error;
  double duration_s = 0;
  int64_t input_tokens = 0, output_tokens = 0;
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;
  Percentiles ttft_ms, tpot_ms, itl_ms, e2e_ms;
  std::vector<std::pair<double, double>> ttft_timeline;  // (start s, TTFT ms) per request
};

// Runs one benchmark per rate; prints progress and a table to stdout. Throws gale::Error when the
// endpoint can't be reached at all.
std::vector<BenchRun> run_bench_serve(const BenchServeConfig& cfg);
void print_bench_table(const std::vector<BenchRun>& runs);
nlohmann::ordered_json bench_json(const BenchServeConfig& cfg, const std::vector<BenchRun>& runs);
// A self-contained HTML page: the table and inline SVG plots (latency and throughput vs rate).
std::string bench_html(const BenchServeConfig& cfg, const std::vector<BenchRun>& runs);
// Text for HTML element content and attribute values: < > & " escaped (the reports' SVG and tables).
std::string html_escape(const std::string& s);

}  // namespace gale::serve
