// `gale tune`: one configuration measured in-process, with the same pieces as `gale eval`
// (engine/eval_compare.h: perplexity, KL and top-1 against the unmodified model) and `gale bench
// --mode throughput` (the Engine end to end on a fixed set of requests: tok/s and each request's
// latency), plus the bytes the configuration holds (weights and the KV caches the engine reserves).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "api/tune_pareto.h"
#include "model/model_loader.h"

namespace gale::cli {

// One point of the sweep: the values of the flags `gale serve` and `gale batch` take.
struct TuneConfig {
  std::string quantization = "none";    // --quantization: none, fp8, int8, int4
  std::string kv_cache_dtype = "auto";  // --kv-cache-dtype: auto, bf16, fp8
  std::string prune = "none";           // none, or METHOD:SPARSITY as `gale prune` takes them (ffn-channels:0.25)
  std::string speculative = "off";      // off, draft (the draft model), ngram, suffix
  int64_t max_num_seqs = 0;             // --max-num-seqs (0: the device's default)
  int64_t max_num_batched_tokens = 0;   // --max-num-batched-tokens (0: the device's default)

  // Identifies the point in points.jsonl: every field, in a fixed order.
  std::string key() const;
  // The fields that change the model's logits (speculation verifies greedily and batch limits only
  // regroup work, so neither changes quality): points sharing it share one quality measurement.
  std::string quality_key() const;
  bool unmodified() const { return quantization == "none" && kv_cache_dtype == "auto" && prune == "none"; }
};
nlohmann::json tune_config_json(const TuneConfig& c);
TuneConfig tune_config_from_json(const nlohmann::json& j);  // throws gale::Error on a malformed object

struct TuneWorkload {
  std::string name;                           // chat, batch, or the prompts file
  std::vector<std::vector<int32_t>> prompts;  // one request each, all submitted at once
  int64_t gen = 32;                           // tokens generated per request (ignore_eos)
  TuneObjective objective = TuneObjective::Throughput;
};

struct TuneQuality {
  double perplexity = 0, reference_perplexity = 0;
  double loss_pct = 0;         // 100 * (perplexity / reference_perplexity - 1)
  double kl_mean = 0;          // KL(reference || model), mean over the scored positions
  double top1_agreement = 1;
};

struct TuneSpeed {
  double tokens_per_s = 0;  // output tokens per second, all requests
  double ttft_p50_ms = 0, ttft_p95_ms = 0;        // submission to first token
  double latency_p50_ms = 0, latency_p95_ms = 0;  // submission to last token
  double seconds = 0;
  int64_t generated = 0;
  double acceptance_rate = 0;  // speculation: accepted / proposed tokens
};

struct TunePoint {
  TuneConfig config;
  TuneQuality quality;
  TuneSpeed speed;
  double weight_bytes = 0, kv_bytes = 0;  // target and draft together
  double measure_seconds = 0;              // wall time the point took (pruning included)
  TuneMetrics metrics() const;
};
nlohmann::json tune_point_json(const TunePoint& p);
TunePoint tune_point_from_json(const nlohmann::json& j);  // throws gale::Error on a malformed object

class TuneMeter {
 public:
  // eval_ids: the text quality is scored on, in windows of ctx tokens (stride ctx). reps: each
  // configuration's workload runs this many times, the best run kept (a shared machine's noise
  // only ever slows a run down). draft_dir: the draft model of speculative "draft" ("" = none).
  TuneMeter(const std::string& model_dir, const std::string& draft_dir, std::vector<int32_t> eval_ids, int64_t ctx,
            TuneWorkload workload, int reps);
  ~TuneMeter();
  const TuneWorkload& workload() const { return workload_; }
  const std::string& draft_dir() const { return draft_dir_; }
  double reference_perplexity() const { return reference_ppl_; }
  // Measures c with the weights of weights_dir (the model, or a pruned copy of it). known: the
  // quality of a point with the same quality_key(), not measured again. Throws gale::Error when the
  // configuration cannot run (a format the backend lacks, say).
  TunePoint measure(const TuneConfig& c, const std::string& weights_dir, const std::optional<TuneQuality>& known);

 private:
  std::string model_dir_, draft_dir_;
  std::vector<int32_t> eval_ids_;
  int64_t ctx_;
  TuneWorkload workload_;
  int reps_;
  LoadedModel reference_;
  double reference_ppl_ = 0;
};

}  // namespace gale::cli
