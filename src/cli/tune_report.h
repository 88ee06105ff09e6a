// `gale tune`'s outputs: the Pareto table on stdout, OUT/pareto.json, OUT/report.html (the table
// and an inline-SVG plot of quality loss against the objective: no script, no network) and
// OUT/gale.toml, the chosen configuration as `gale serve --config` and `gale batch --config` read it.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "cli/tune_sweep.h"

namespace gale::cli {

struct TuneReportInfo {
  std::string model_dir;   // the model as given (-m)
  std::string draft_dir;   // the draft behind speculative "draft" ("" = none)
  std::string out_dir;
  std::string workload;
  TuneObjective objective = TuneObjective::Throughput;
  TuneLimits limits;
  double reference_perplexity = 0;
  double budget_s = 0;
};

// pareto.json's object: the settings, every point with "pareto", "feasible" and "chosen", the
// chosen key (null when no point is within the limits), and how the run went.
nlohmann::json tune_report_json(const TuneReportInfo& info, const TuneSweepResult& r);
void print_tune_table(const TuneReportInfo& info, const TuneSweepResult& r);
std::string tune_report_html(const TuneReportInfo& info, const TuneSweepResult& r);
// The chosen point as TOML keys named like the flags (model, quantization, kv_cache_dtype,
// max_num_seqs, max_num_batched_tokens, speculative, num_speculative_tokens).
std::string tune_config_toml(const TuneReportInfo& info, const TunePoint& p);
// Writes pareto.json, report.html and (when a point was chosen) gale.toml under info.out_dir.
void write_tune_outputs(const TuneReportInfo& info, const TuneSweepResult& r);

}  // namespace gale::cli
