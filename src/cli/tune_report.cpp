#include "cli/tune_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "api/config_file.h"
#include "serve/bench_serve.h"

namespace gale::cli {
namespace {

using serve::html_escape;

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string absolute(const std::string& p) { return fs::absolute(p).lexically_normal().string(); }

struct Flags {
  std::set<size_t> front;
  std::vector<bool> feasible;
};

Flags flags_of(const TuneReportInfo& info, const TuneSweepResult& r) {
  std::vector<TuneMetrics> m;
  for (const TunePoint& p : r.points) m.push_back(p.metrics());
  Flags f;
  for (size_t i : pareto_front(m)) f.front.insert(i);
  for (const TuneMetrics& x : m) f.feasible.push_back(tune_feasible(x, info.limits));
  return f;
}

double objective_value(const TunePoint& p, TuneObjective o) {
  return o == TuneObjective::Throughput ? p.speed.tokens_per_s : p.speed.latency_p95_ms;
}

}  // namespace

json tune_report_json(const TuneReportInfo& info, const TuneSweepResult& r) {
  const Flags f = flags_of(info, r);
  json points = json::array();
  for (size_t i = 0; i < r.points.size(); ++i) {
    json j = tune_point_json(r.points[i]);
    j["pareto"] = f.front.count(i) > 0;
    j["feasible"] = bool(f.feasible[i]);
    j["chosen"] = r.chosen && *r.chosen == i;
    points.push_back(std::move(j));
  }
  json j = {{"model", info.model_dir},
            {"workload", info.workload},
            {"objective", tune_objective_name(info.objective)},
            {"max_quality_loss_pct", info.limits.max_quality_loss_pct},
            {"memory_limit_bytes", info.limits.memory_limit_bytes},
            {"reference_perplexity", info.reference_perplexity},
            {"budget_seconds", info.budget_s},
            {"elapsed_seconds", r.elapsed_s},
            {"measured_now", r.measured_now},
            {"reused", r.reused},
            {"stopped_by_budget", r.stopped_by_budget},
            {"stopped_by_max_points", r.stopped_by_max_points},
            {"failed", r.failed},
            {"points", points},
            {"chosen", r.chosen ? json(r.points[*r.chosen].config.key()) : json(nullptr)}};
  if (r.chosen) j["config_file"] = (fs::path(info.out_dir) / "gale.toml").string();
  return j;
}

void print_tune_table(const TuneReportInfo& info, const TuneSweepResult& r) {
  const Flags f = flags_of(info, r);
  std::printf("gale tune: %s, workload %s (objective: %s), %zu points (%lld measured now, %lld kept from before), "
              "%.0f s\n",
              info.model_dir.c_str(), info.workload.c_str(), tune_objective_name(info.objective), r.points.size(),
              (long long)r.measured_now, (long long)r.reused, r.elapsed_s);
  std::printf("reference perplexity %.4f; limits: quality loss <= %.2f%%%s\n", info.reference_perplexity,
              info.limits.max_quality_loss_pct,
              info.limits.memory_limit_bytes > 0
                  ? (", memory <= " + fmt("%.1f MiB", info.limits.memory_limit_bytes / double(1 << 20))).c_str()
                  : "");
  std::printf("%-3s %-6s %-5s %-18s %-6s %5s %6s %9s %9s %9s %9s %8s %6s\n", "", "weights", "kv", "pruning", "spec",
              "seqs", "tokens", "loss %", "KL", "tok/s", "p95 ms", "MiB", "front");
  for (size_t i = 0; i < r.points.size(); ++i) {
    const TunePoint& p = r.points[i];
    const TuneConfig& c = p.config;
    const char* mark = r.chosen && *r.chosen == i ? "=>" : f.feasible[i] ? "" : "x";
    std::printf("%-3s %-6s %-5s %-18s %-6s %5lld %6lld %9.3f %9.5f %9.1f %9.0f %8.1f %6s\n", mark,
                c.quantization.c_str(), c.kv_cache_dtype.c_str(), c.prune.c_str(), c.speculative.c_str(),
                (long long)c.max_num_seqs, (long long)c.max_num_batched_tokens, p.quality.loss_pct, p.quality.kl_mean,
                p.speed.tokens_per_s, p.speed.latency_p95_ms, (p.weight_bytes + p.kv_bytes) / double(1 << 20),
                f.front.count(i) ? "yes" : "");
  }
  std::printf("=> chosen, x outside the limits; front: on the Pareto front of quality loss, tok/s, p95 latency and "
              "memory\n");
  if (r.stopped_by_budget) std::printf("stopped by the time budget (%.0f s): rerun with the same --out to go on\n", info.budget_s);
  if (r.stopped_by_max_points) std::printf("stopped by --max-points: rerun with the same --out to go on\n");
  for (const std::string& e : r.failed) std::printf("could not run: %s\n", e.c_str());
  if (r.chosen)
    std::printf("chosen: %s -> %s\n", r.points[*r.chosen].config.key().c_str(),
                (fs::path(info.out_dir) / "gale.toml").string().c_str());
  else
    std::printf("no measured point is within the limits: no gale.toml written\n");
}

std::string tune_report_html(const TuneReportInfo& info, const TuneSweepResult& r) {
  const Flags f = flags_of(info, r);
  const bool tput = info.objective == TuneObjective::Throughput;
  // The plot: the objective across, quality loss up; the limit as a dashed line.
  const double W = 720, H = 420, L = 70, R = 20, T = 20, B = 50;
  double xmin = 1e300, xmax = -1e300, ymin = 0, ymax = info.limits.max_quality_loss_pct;
  // Losses far past the limit (a pruning that costs 50 %) would squash the points that matter
  // into a line: the axis stops at twice the limit or the largest loss within it, and points
  // above are drawn on the top edge (their value in the tooltip and the table).
  double ycap = 2.0 * info.limits.max_quality_loss_pct;
  for (const TunePoint& p : r.points)
    if (p.quality.loss_pct <= info.limits.max_quality_loss_pct) ycap = std::max(ycap, p.quality.loss_pct);
  for (const TunePoint& p : r.points) {
    xmin = std::min(xmin, objective_value(p, info.objective));
    xmax = std::max(xmax, objective_value(p, info.objective));
    ymin = std::min(ymin, p.quality.loss_pct);
    ymax = std::max(ymax, std::min(p.quality.loss_pct, ycap));
  }
  if (r.points.empty()) xmin = 0, xmax = 1;
  if (xmax - xmin < 1e-9) xmin -= 1, xmax += 1;
  if (ymax - ymin < 1e-9) ymax = ymin + 1;
  const double xpad = 0.05 * (xmax - xmin), ypad = 0.05 * (ymax - ymin);
  xmin -= xpad, xmax += xpad, ymin -= ypad, ymax += ypad;
  auto X = [&](double v) { return L + (v - xmin) / (xmax - xmin) * (W - L - R); };
  auto Y = [&](double v) { return H - B - (v - ymin) / (ymax - ymin) * (H - T - B); };
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" +
                    fmt("%.0f", H) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<rect x=\"" + fmt("%.0f", L) + "\" y=\"" + fmt("%.0f", T) + "\" width=\"" + fmt("%.0f", W - L - R) +
         "\" height=\"" + fmt("%.0f", H - T - B) + "\" fill=\"none\" stroke=\"#888\"/>\n";
  for (int t = 0; t <= 4; ++t) {
    const double xv = xmin + (xmax - xmin) * t / 4, yv = ymin + (ymax - ymin) * t / 4;
    svg += "<text x=\"" + fmt("%.1f", X(xv)) + "\" y=\"" + fmt("%.0f", H - B + 16) + "\" text-anchor=\"middle\">" +
           fmt(tput ? "%.0f" : "%.0f", xv) + "</text>\n";
    svg += "<text x=\"" + fmt("%.0f", L - 6) + "\" y=\"" + fmt("%.1f", Y(yv) + 4) + "\" text-anchor=\"end\">" +
           fmt("%.2f", yv) + "</text>\n";
  }
  svg += "<text x=\"" + fmt("%.0f", (L + W - R) / 2) + "\" y=\"" + fmt("%.0f", H - 12) + "\" text-anchor=\"middle\">" +
         std::string(tput ? "output tokens/s (higher is better)" : "p95 request latency, ms (lower is better)") +
         "</text>\n";
  svg += "<text transform=\"translate(16," + fmt("%.0f", (T + H - B) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">perplexity increase, % (lower is better)</text>\n";
  svg += "<line x1=\"" + fmt("%.0f", L) + "\" x2=\"" + fmt("%.0f", W - R) + "\" y1=\"" +
         fmt("%.1f", Y(info.limits.max_quality_loss_pct)) + "\" y2=\"" + fmt("%.1f", Y(info.limits.max_quality_loss_pct)) +
         "\" stroke=\"#c00\" stroke-dasharray=\"4 4\"><title>--max-quality-loss</title></line>\n";
  for (size_t i = 0; i < r.points.size(); ++i) {
    const TunePoint& p = r.points[i];
    const bool front = f.front.count(i) > 0, chosen = r.chosen && *r.chosen == i;
    const std::string fill = !f.feasible[i] ? "#ccc" : front ? "#1f6fd0" : "#fff";
    svg += "<circle cx=\"" + fmt("%.1f", X(objective_value(p, info.objective))) + "\" cy=\"" +
           fmt("%.1f", Y(std::min(p.quality.loss_pct, ycap))) + "\" r=\"" + (chosen ? "8" : "5") + "\" fill=\"" + fill +
           "\" stroke=\"" + (chosen ? "#c00" : "#1f6fd0") + "\" stroke-width=\"" + (chosen ? "3" : "1.5") +
           "\"><title>" + html_escape(p.config.key()) + ": loss " + fmt("%.3f", p.quality.loss_pct) + " %" +
           (p.quality.loss_pct > ycap ? " (above the axis)" : "") + "</title></circle>\n";
  }
  svg += "</svg>\n";

  std::string rows;
  for (size_t i = 0; i < r.points.size(); ++i) {
    const TunePoint& p = r.points[i];
    const bool chosen = r.chosen && *r.chosen == i;
    rows += std::string("<tr") + (chosen ? " class=\"chosen\"" : "") + "><td>" + html_escape(p.config.key()) +
            "</td><td>" + fmt("%.3f", p.quality.loss_pct) + "</td><td>" + fmt("%.5f", p.quality.kl_mean) + "</td><td>" +
            fmt("%.4f", p.quality.top1_agreement) + "</td><td>" + fmt("%.1f", p.speed.tokens_per_s) + "</td><td>" +
            fmt("%.0f", p.speed.ttft_p50_ms) + "</td><td>" + fmt("%.0f", p.speed.latency_p50_ms) + "</td><td>" +
            fmt("%.0f", p.speed.latency_p95_ms) + "</td><td>" + fmt("%.1f", (p.weight_bytes + p.kv_bytes) / double(1 << 20)) +
            "</td><td>" + (f.front.count(i) ? "yes" : "") + "</td><td>" + (f.feasible[i] ? "yes" : "no") + "</td></tr>\n";
  }
  std::string chosen = r.chosen ? html_escape(r.points[*r.chosen].config.key()) : "none (no point within the limits)";
  return "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>gale tune</title>\n"
         "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:2px 6px;text-align:right}td:first-child{text-align:left}tr.chosen{background:#fde}</style>"
         "</head><body>\n<h1>gale tune</h1>\n<p>Model " +
         html_escape(info.model_dir) + ", workload " + html_escape(info.workload) + ", objective " +
         tune_objective_name(info.objective) + ", quality loss limit " + fmt("%.2f", info.limits.max_quality_loss_pct) +
         " %" +
         (info.limits.memory_limit_bytes > 0 ? ", memory limit " + fmt("%.1f MiB", info.limits.memory_limit_bytes / double(1 << 20)) : "") +
         ", reference perplexity " + fmt("%.4f", info.reference_perplexity) + ".</p>\n<p>Chosen: <b>" + chosen +
         "</b></p>\n" + svg +
         "<p>Filled blue: on the Pareto front (quality loss, tok/s, p95 latency, memory); white: dominated; grey: "
         "outside the limits; red ring: chosen; dashed line: the quality loss limit.</p>\n"
         "<table><tr><th>configuration</th><th>loss %</th><th>KL</th><th>top-1</th><th>tok/s</th><th>TTFT p50 ms</th>"
         "<th>latency p50 ms</th><th>latency p95 ms</th><th>MiB</th><th>front</th><th>within limits</th></tr>\n" +
         rows + "</table>\n</body></html>\n";
}

std::string tune_config_toml(const TuneReportInfo& info, const TunePoint& p) {
  const TuneConfig& c = p.config;
  const std::string model = c.prune == "none" ? absolute(info.model_dir) : absolute(pruned_model_dir(info.out_dir, c.prune));
  const std::string spec = c.speculative == "draft" ? "draft:" + absolute(info.draft_dir) : c.speculative;
  std::string t = "# gale tune's choice (" + c.key() + "):\n# " + fmt("%.1f", p.speed.tokens_per_s) +
                  " output tok/s, p95 latency " + fmt("%.0f", p.speed.latency_p95_ms) + " ms, perplexity +" +
                  fmt("%.3f", p.quality.loss_pct) + " %, " + fmt("%.1f", (p.weight_bytes + p.kv_bytes) / double(1 << 20)) +
                  " MiB on the workload " + info.workload + ".\n# Use: gale serve --config FILE, gale batch --config FILE "
                  "(flags given on the command line win).\n";
  t += "model = " + toml_quote(model) + "\n";
  t += "quantization = " + toml_quote(c.quantization) + "\n";
  t += "kv_cache_dtype = " + toml_quote(c.kv_cache_dtype) + "\n";
  t += "max_num_seqs = " + std::to_string(c.max_num_seqs) + "\n";
  t += "max_num_batched_tokens = " + std::to_string(c.max_num_batched_tokens) + "\n";
  t += "speculative = " + toml_quote(spec) + "\n";
  if (c.speculative != "off") t += "num_speculative_tokens = \"auto\"\n";
  return t;
}

void write_tune_outputs(const TuneReportInfo& info, const TuneSweepResult& r) {
  const fs::path out(info.out_dir);
  write_file_atomic((out / "pareto.json").string(), tune_report_json(info, r).dump(2) + "\n");
  write_file_atomic((out / "report.html").string(), tune_report_html(info, r));
  if (r.chosen) {
    write_file_atomic((out / "gale.toml").string(), tune_config_toml(info, r.points[*r.chosen]));
  } else {
    std::error_code ec;
    fs::remove(out / "gale.toml", ec);  // an earlier run's choice is not this run's
  }
}

}  // namespace gale::cli
