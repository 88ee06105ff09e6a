#include "serve/metrics.h"

#include <cstdio>
#include <unistd.h>

namespace gale::serve {

void Histogram::observe(double v) {
  std::lock_guard lk(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

static std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard lk(mu_);
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : ttft({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
      tpot({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5}),
      e2e({0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480}) {}

void Metrics::count_request(const std::string& outcome) {
  std::lock_guard lk(mu_);
  ++requests_[outcome];
}

void Metrics::count_http(int status) {
  std::lock_guard lk(mu_);
  ++http_[status];
}

std::string Metrics::render(const EngineStats& s, int64_t in_flight, int64_t open_connections) const {
  std::string o;
  auto gauge = [&](const char* name, const char* help, double v, const char* type = "gauge") {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + num(v) + "\n";
  };
  {
    std::lock_guard lk(mu_);
    o += "# HELP gale_requests_total Finished requests (engine sequences) by outcome.\n# TYPE gale_requests_total counter\n";
    for (const char* k : {"stop", "length", "abort", "timeout", "error", "rejected"}) {
      auto it = requests_.find(k);
      o += std::string("gale_requests_total{outcome=\"") + k + "\"} " + std::to_string(it == requests_.end() ? 0 : it->second) + "\n";
    }
    o += "# HELP gale_http_responses_total HTTP responses by status code.\n# TYPE gale_http_responses_total counter\n";
    for (auto& [code, n] : http_) o += "gale_http_responses_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
  }
  gauge("gale_num_requests_running", "Sequences in the running batch.", double(s.running));
  gauge("gale_num_requests_waiting", "Sequences waiting to be scheduled.", double(s.waiting));
  gauge("gale_num_requests_in_flight", "Sequences accepted by the server and not yet finished.", double(in_flight));
  gauge("gale_open_connections", "Open HTTP connections.", double(open_connections));
  gauge("gale_kv_cache_blocks_total", "KV-cache blocks.", double(s.kv_blocks_total));
  gauge("gale_kv_cache_capacity_tokens", "Tokens the KV cache holds (blocks x block size).", double(s.kv_capacity_tokens));
  if (!s.kv_cache_dtype.empty())
    o += "# HELP gale_kv_cache_info The KV cache's storage dtype (--kv-cache-dtype).\n# TYPE gale_kv_cache_info gauge\n"
         "gale_kv_cache_info{dtype=\"" + s.kv_cache_dtype + "\"} 1\n";
  gauge("gale_kv_cache_blocks_free", "Free KV-cache blocks.", double(s.kv_blocks_free));
  gauge("gale_kv_cache_blocks_cached", "KV-cache blocks held by the prefix cache.", double(s.kv_blocks_cached));
  gauge("gale_kv_cache_usage_perc", "Fraction of KV-cache blocks not free (0-1), prefix-cache blocks included.",
        s.kv_blocks_total > 0 ? double(s.kv_blocks_total - s.kv_blocks_free) / double(s.kv_blocks_total) : 0.0);
  gauge("gale_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", double(s.prefix_cache_queried_tokens), "counter");
  gauge("gale_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", double(s.prefix_cache_hit_tokens), "counter");
  gauge("gale_prefix_cache_hit_rate", "Prefix-cache hits / queries since start (0-1).",
        s.prefix_cache_queried_tokens > 0 ? double(s.prefix_cache_hit_tokens) / double(s.prefix_cache_queried_tokens) : 0.0);
  gauge("gale_prefix_cache_host_hits_total", "Prompt tokens brought back from the host KV tier (--host-kv-cache).",
        double(s.prefix_cache_host_hit_tokens), "counter");
  gauge("gale_kv_cache_host_blocks_total", "Blocks the host KV tier holds at most.", double(s.kv_host_blocks_total));
  gauge("gale_kv_cache_host_blocks_cached", "Prefix-cache blocks on the host KV tier.", double(s.kv_host_blocks_cached));
  gauge("gale_kv_events_sent_total", "KV events (--kv-events) handed to the ZeroMQ socket.", double(s.kv_events_sent), "counter");
  gauge("gale_kv_events_dropped_total", "KV events (--kv-events) dropped: the queue was full or the socket refused them.",
        double(s.kv_events_dropped), "counter");
  gauge("gale_num_preemptions_total", "Sequences preempted for lack of KV blocks.", double(s.preemptions), "counter");
  gauge("gale_prompt_tokens_total", "Prompt tokens processed.", double(s.prompt_tokens_total), "counter");
  gauge("gale_generation_tokens_total", "Tokens generated.", double(s.generation_tokens_total), "counter");
  gauge("gale_spec_verifies_total", "Speculative decoding: verifies (a request's proposals checked in one step).",
        double(s.spec_verifies), "counter");
  gauge("gale_spec_proposed_tokens_total", "Speculative decoding: tokens proposed.", double(s.spec_proposed_tokens), "counter");
  gauge("gale_spec_accepted_tokens_total", "Speculative decoding: proposed tokens accepted.", double(s.spec_accepted_tokens),
        "counter");
  gauge("gale_spec_acceptance_rate", "Speculative decoding: accepted / proposed tokens since start (0-1).", s.acceptance_rate());
  gauge("gale_spec_mean_accepted_length", "Speculative decoding: tokens returned per verify (accepted + 1) since start.",
        s.mean_accepted_length());
  gauge("gale_spec_proposer_seconds_total", "Speculative decoding: wall time spent proposing.", s.spec_proposer_seconds,
        "counter");
  gauge("gale_spec_num_tokens", "Speculative decoding: k chosen for the last step that could speculate.", double(s.spec_k));
  ttft.render(o, "gale_time_to_first_token_seconds", "Time from arrival to the first generated token.");
  tpot.render(o, "gale_time_per_output_token_seconds", "Mean time between output tokens after the first, per request.");
  e2e.render(o, "gale_e2e_request_latency_seconds", "Time from arrival to the last token.");
  gauge("process_resident_memory_bytes", "Resident memory size in bytes.", double(resident_memory_bytes()));
  return o;
}

int64_t resident_memory_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long pages_total = 0, pages_res = 0;
  int n = std::fscanf(f, "%lld %lld", &pages_total, &pages_res);
  std::fclose(f);
  return n == 2 ? int64_t(pages_res) * int64_t(sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace gale::serve
