#include "cli/tune_sweep.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "api/engine_args.h"
#include "core/error.h"
#include "model/prune.h"

namespace gale::cli {
namespace {

using clock_type = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Writes the pruned checkpoint unless a finished one is there (prune_checkpoint renames a
// complete folder into place, so config.json present means complete).
void ensure_pruned(const std::string& src, const std::string& dir, const std::string& prune,
                   const std::vector<int32_t>& calib) {
  if (fs::exists(fs::path(dir) / "config.json")) return;
  const size_t colon = prune.rfind(':');
  if (colon == std::string::npos) throw Error("pruning '" + prune + "' is not METHOD:SPARSITY");
  PruneOptions po;
  po.source = src;
  po.out = dir;
  po.method = prune.substr(0, colon);
  po.sparsity = std::stod(prune.substr(colon + 1));
  po.force = true;
  if (prune_needs_calibration(parse_prune_method(po.method), po.score)) po.calib_tokens = calib;
  fs::create_directories(fs::path(dir).parent_path());
  prune_checkpoint(po);
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", bytes / double(1 << 20));
  return b;
}

}  // namespace

std::string pruned_model_dir(const std::string& out_dir, const std::string& prune) {
  std::string name = prune;
  for (char& c : name)
    if (c == ':') c = '-';
  return (fs::path(out_dir) / "pruned" / name).string();
}

std::vector<TuneAxis> tune_axes(const TuneWorkload& w, bool has_draft) {
  auto set = [](auto member, auto value) {
    return std::function<void(TuneConfig&)>([member, value](TuneConfig& c) { c.*member = value; });
  };
  std::vector<TuneAxis> axes;
  axes.push_back({"weights",
                  {set(&TuneConfig::quantization, std::string("fp8")), set(&TuneConfig::quantization, std::string("int8")),
                   set(&TuneConfig::quantization, std::string("int4"))}});
  axes.push_back({"kv cache", {set(&TuneConfig::kv_cache_dtype, std::string("bf16")),
                               set(&TuneConfig::kv_cache_dtype, std::string("fp8"))}});
  // Structured pruning only: unstructured and 2:4 zeros are stored dense, so on this engine they
  // cost quality and save neither bytes nor time.
  axes.push_back({"pruning", {set(&TuneConfig::prune, std::string("ffn-channels:0.25")),
                              set(&TuneConfig::prune, std::string("layers:0.25"))}});
  TuneAxis spec{"speculation", {}};
  if (has_draft) spec.values.push_back(set(&TuneConfig::speculative, std::string("draft")));
  spec.values.push_back(set(&TuneConfig::speculative, std::string("ngram")));
  spec.values.push_back(set(&TuneConfig::speculative, std::string("suffix")));
  axes.push_back(spec);
  // Sequence slots around the number of requests at once: fewer than the workload's requests
  // queue some (less KV memory, more latency); the default 64 reserves KV for slots a workload of
  // fewer requests never fills.
  const int64_t n = std::max<int64_t>(1, int64_t(w.prompts.size()));
  std::vector<int64_t> seqs = {std::max<int64_t>(1, n / 4), std::max<int64_t>(1, n / 2), n};
  seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
  TuneAxis slots{"max_num_seqs", {}};
  for (int64_t s : seqs) slots.values.push_back(set(&TuneConfig::max_num_seqs, s));
  axes.push_back(slots);
  axes.push_back({"max_num_batched_tokens", {set(&TuneConfig::max_num_batched_tokens, int64_t(256)),
                                             set(&TuneConfig::max_num_batched_tokens, int64_t(1024))}});
  return axes;
}

TuneSweepResult run_tune_sweep(const TuneSweepOptions& o, TuneMeter& meter, TunePointStore& store) {
  const auto t0 = clock_type::now();
  TuneSweepResult r;
  std::map<std::string, TuneQuality> qualities;  // by quality_key
  for (const TunePoint& p : store.points()) qualities.emplace(p.config.quality_key(), p.quality);
  double longest_s = 0;  // the slowest point this run: what the next one is assumed to cost
  int64_t on_path = 0;
  bool stop = false;

  // The point for c: reused from the store, or measured now. nullopt when it cannot run or the
  // budget / point limit stops the sweep.
  auto visit = [&](const TuneConfig& c) -> std::optional<TunePoint> {
    if (stop) return std::nullopt;
    if (o.max_points > 0 && on_path >= o.max_points) {
      r.stopped_by_max_points = stop = true;
      return std::nullopt;
    }
    const std::string key = c.key();
    if (const TunePoint* p = store.find(key)) {
      ++on_path;
      ++r.reused;
      if (!o.quiet) std::fprintf(stderr, "gale tune: [%lld] %s: measured before, kept\n", (long long)on_path, key.c_str());
      return *p;
    }
    const double elapsed = seconds_since(t0);
    if (r.measured_now > 0 && elapsed + longest_s > o.budget_s) {
      r.stopped_by_budget = stop = true;
      return std::nullopt;
    }
    ++on_path;
    if (!o.quiet)
      std::fprintf(stderr, "gale tune: [%lld] %s: measuring (%.0f s of %.0f s budget used)\n", (long long)on_path,
                   key.c_str(), elapsed, o.budget_s);
    const auto p0 = clock_type::now();
    try {
      std::string dir = o.model_dir;
      if (c.prune != "none") {
        dir = pruned_model_dir(o.out_dir, c.prune);
        ensure_pruned(o.model_dir, dir, c.prune, o.calib_tokens);
      }
      auto q = qualities.find(c.quality_key());
      TunePoint p = meter.measure(c, dir, q == qualities.end() ? std::nullopt : std::optional<TuneQuality>(q->second));
      p.measure_seconds = seconds_since(p0);  // pruning included
      qualities.emplace(c.quality_key(), p.quality);
      store.add(p);
      ++r.measured_now;
      longest_s = std::max(longest_s, p.measure_seconds);
      if (!o.quiet)
        std::fprintf(stderr, "gale tune:     %.1f tok/s, p95 latency %.0f ms, quality loss %+.2f%%, %s (%.1f s)\n",
                     p.speed.tokens_per_s, p.speed.latency_p95_ms, p.quality.loss_pct,
                     mib(p.weight_bytes + p.kv_bytes).c_str(), p.measure_seconds);
      return p;
    } catch (const Error& e) {
      longest_s = std::max(longest_s, seconds_since(p0));
      r.failed.push_back(key + ": " + e.what());
      if (!o.quiet) std::fprintf(stderr, "gale tune:     cannot run: %s\n", e.what());
      return std::nullopt;
    }
  };

  TuneConfig best;
  best.max_num_seqs = 0;  // the device's defaults, made explicit below
  best.max_num_batched_tokens = 0;
  {
    // Explicit defaults, so gale.toml states every limit it was measured with.
    EngineOptions eo;
    const EngineConfig ec = engine_config(eo, /*gpu=*/false);
    best.max_num_seqs = ec.max_num_seqs;
    best.max_num_batched_tokens = ec.max_num_batched_tokens;
  }
  std::optional<TunePoint> best_point = visit(best);
  if (best_point) {
    for (const TuneAxis& axis : tune_axes(meter.workload(), !meter.draft_dir().empty())) {
      std::vector<TunePoint> candidates = {*best_point};
      for (const auto& set : axis.values) {
        TuneConfig c = best;
        set(c);
        if (c.key() == best.key()) continue;
        if (std::optional<TunePoint> p = visit(c)) candidates.push_back(*p);
      }
      std::vector<TuneMetrics> m;
      for (const TunePoint& p : candidates) m.push_back(p.metrics());
      if (std::optional<size_t> i = tune_choose(m, o.limits, meter.workload().objective)) {
        best = candidates[*i].config;
        best_point = candidates[*i];
      }
      if (stop) break;
    }
  }
  r.points = store.points();
  std::vector<TuneMetrics> all;
  for (const TunePoint& p : r.points) all.push_back(p.metrics());
  r.chosen = tune_choose(all, o.limits, meter.workload().objective);
  r.elapsed_s = seconds_since(t0);
  return r;
}

}  // namespace gale::cli
