#include "cli/tune_measure.h"

#include <algorithm>
#include <chrono>
#include <unordered_map>

#include "api/engine_args.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/eval_compare.h"
#include "engine/perplexity.h"

namespace gale::cli {
namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

ModelOptions model_options(const TuneConfig& c, const std::string& dir) {
  ModelOptions mo;
  mo.model = dir;
  mo.quantization = c.quantization;
  mo.kv_cache_dtype = c.kv_cache_dtype;
  return mo;
}

// One run of the workload: every request submitted at once (so a request's latency includes its
// wait for a free sequence slot under max_num_seqs), greedy, ignore_eos.
TuneSpeed run_workload(Transformer& m, Transformer* draft, const EngineConfig& ec, const TuneWorkload& w,
                       double* kv_bytes) {
  Engine e(m, nullptr, ec, draft);
  *kv_bytes = double(e.kv_cache().bytes()) + (e.draft_kv_cache() ? double(e.draft_kv_cache()->bytes()) : 0.0);
  const size_t n = w.prompts.size();
  std::unordered_map<uint64_t, size_t> index;
  std::vector<double> first(n, -1), last(n, -1);
  const auto t0 = clock_type::now();
  for (size_t i = 0; i < n; ++i) {
    RequestParams p;
    p.prompt = w.prompts[i];
    p.max_tokens = w.gen;
    p.ignore_eos = true;
    index[e.add_request(std::move(p))] = i;
  }
  TuneSpeed s;
  while (e.has_unfinished()) {
    std::vector<RequestOutput> outs = e.step();
    const double t = seconds_since(t0) * 1e3;
    for (const RequestOutput& o : outs) {
      const size_t i = index.at(o.id);
      if (o.finish_reason == "error") throw Error("the workload's request failed: " + o.error);
      s.generated += int64_t(o.new_ids.size());
      if (first[i] < 0 && !o.new_ids.empty()) first[i] = t;
      if (o.finished) last[i] = t;
    }
  }
  s.seconds = seconds_since(t0);
  s.tokens_per_s = double(s.generated) / std::max(s.seconds, 1e-9);
  s.ttft_p50_ms = quantile(first, 0.5);
  s.ttft_p95_ms = quantile(first, 0.95);
  s.latency_p50_ms = quantile(last, 0.5);
  s.latency_p95_ms = quantile(last, 0.95);
  s.acceptance_rate = e.stats().acceptance_rate();
  return s;
}

bool better_run(const TuneSpeed& a, const TuneSpeed& b, TuneObjective o) {
  return o == TuneObjective::Throughput ? a.tokens_per_s > b.tokens_per_s : a.latency_p95_ms < b.latency_p95_ms;
}

template <class T>
T field(const json& j, const char* k) {
  auto it = j.find(k);
  if (it == j.end()) throw Error(std::string("missing key '") + k + "'");
  return it->get<T>();
}

}  // namespace

std::string TuneConfig::key() const {
  return quality_key() + " spec=" + speculative + " seqs=" + std::to_string(max_num_seqs) +
         " tokens=" + std::to_string(max_num_batched_tokens);
}

std::string TuneConfig::quality_key() const {
  return "q=" + quantization + " kv=" + kv_cache_dtype + " prune=" + prune;
}

json tune_config_json(const TuneConfig& c) {
  return {{"quantization", c.quantization}, {"kv_cache_dtype", c.kv_cache_dtype}, {"prune", c.prune},
          {"speculative", c.speculative},   {"max_num_seqs", c.max_num_seqs},     {"max_num_batched_tokens", c.max_num_batched_tokens}};
}

TuneConfig tune_config_from_json(const json& j) {
  try {
    TuneConfig c;
    c.quantization = field<std::string>(j, "quantization");
    c.kv_cache_dtype = field<std::string>(j, "kv_cache_dtype");
    c.prune = field<std::string>(j, "prune");
    c.speculative = field<std::string>(j, "speculative");
    c.max_num_seqs = field<int64_t>(j, "max_num_seqs");
    c.max_num_batched_tokens = field<int64_t>(j, "max_num_batched_tokens");
    return c;
  } catch (const json::exception& e) {
    throw Error(std::string("bad configuration: ") + e.what());
  }
}

TuneMetrics TunePoint::metrics() const {
  return {quality.loss_pct, speed.tokens_per_s, speed.latency_p95_ms, weight_bytes + kv_bytes};
}

json tune_point_json(const TunePoint& p) {
  const TuneQuality& q = p.quality;
  const TuneSpeed& s = p.speed;
  return {{"key", p.config.key()},
          {"config", tune_config_json(p.config)},
          {"quality_loss_pct", q.loss_pct},
          {"perplexity", q.perplexity},
          {"reference_perplexity", q.reference_perplexity},
          {"kl_divergence", q.kl_mean},
          {"top1_agreement", q.top1_agreement},
          {"output_tokens_per_s", s.tokens_per_s},
          {"ttft_p50_ms", s.ttft_p50_ms},
          {"ttft_p95_ms", s.ttft_p95_ms},
          {"latency_p50_ms", s.latency_p50_ms},
          {"latency_p95_ms", s.latency_p95_ms},
          {"generated_tokens", s.generated},
          {"seconds", s.seconds},
          {"acceptance_rate", s.acceptance_rate},
          {"weight_bytes", p.weight_bytes},
          {"kv_cache_bytes", p.kv_bytes},
          {"memory_bytes", p.weight_bytes + p.kv_bytes},
          {"tokens_per_s_per_gib", s.tokens_per_s / std::max(1.0, (p.weight_bytes + p.kv_bytes) / double(1 << 30))},
          {"measure_seconds", p.measure_seconds}};
}

TunePoint tune_point_from_json(const json& j) {
  try {
    TunePoint p;
    p.config = tune_config_from_json(j.at("config"));
    p.quality.loss_pct = field<double>(j, "quality_loss_pct");
    p.quality.perplexity = field<double>(j, "perplexity");
    p.quality.reference_perplexity = field<double>(j, "reference_perplexity");
    p.quality.kl_mean = field<double>(j, "kl_divergence");
    p.quality.top1_agreement = field<double>(j, "top1_agreement");
    p.speed.tokens_per_s = field<double>(j, "output_tokens_per_s");
    p.speed.ttft_p50_ms = field<double>(j, "ttft_p50_ms");
    p.speed.ttft_p95_ms = field<double>(j, "ttft_p95_ms");
    p.speed.latency_p50_ms = field<double>(j, "latency_p50_ms");
    p.speed.latency_p95_ms = field<double>(j, "latency_p95_ms");
    p.speed.generated = field<int64_t>(j, "generated_tokens");
    p.speed.seconds = field<double>(j, "seconds");
    p.speed.acceptance_rate = field<double>(j, "acceptance_rate");
    p.weight_bytes = field<double>(j, "weight_bytes");
    p.kv_bytes = field<double>(j, "kv_cache_bytes");
    p.measure_seconds = field<double>(j, "measure_seconds");
    return p;
  } catch (const json::exception& e) {
    throw Error(std::string("bad point: ") + e.what());
  }
}

TuneMeter::TuneMeter(const std::string& model_dir, const std::string& draft_dir, std::vector<int32_t> eval_ids,
                     int64_t ctx, TuneWorkload workload, int reps)
    : model_dir_(model_dir),
      draft_dir_(draft_dir),
      eval_ids_(std::move(eval_ids)),
      ctx_(ctx),
      workload_(std::move(workload)),
      reps_(std::max(reps, 1)) {
  // The unmodified model, as stored: what every quality figure is relative to.
  ModelOptions mo = model_options(TuneConfig{}, model_dir_);
  reference_ = load_model(model_dir_, backend_options(mo), load_options(mo));
  if (reference_.synthetic) throw Error("tune needs a model folder with a tokenizer (not " + model_dir_ + ")");
  ctx_ = std::min(ctx_, reference_.model->config().max_position_embeddings);
  if (int64_t(eval_ids_.size()) < 2) throw Error("the evaluation text is too short (fewer than 2 tokens)");
  reference_ppl_ = perplexity(*reference_.model, eval_ids_, ctx_, ctx_).ppl;
}

TuneMeter::~TuneMeter() = default;

TunePoint TuneMeter::measure(const TuneConfig& c, const std::string& weights_dir,
                             const std::optional<TuneQuality>& known) {
  const auto t0 = clock_type::now();
  TunePoint p;
  p.config = c;
  const ModelOptions mo = model_options(c, weights_dir);
  LoadedModel lm = load_model(weights_dir, backend_options(mo), load_options(mo));
  if (known) {
    p.quality = *known;
  } else if (c.unmodified()) {  // the reference itself: nothing to compare
    p.quality.perplexity = p.quality.reference_perplexity = reference_ppl_;
  } else {
    check_comparable(*lm.model, *reference_.model);
    const EvalResult r = eval_compare(*lm.model, *reference_.model, eval_ids_, ctx_, ctx_);
    p.quality.perplexity = r.model.ppl;
    p.quality.reference_perplexity = r.reference.ppl;
    p.quality.kl_mean = r.kl_mean;
    p.quality.top1_agreement = r.top1_agreement;
  }
  p.quality.loss_pct = 100.0 * (p.quality.perplexity / p.quality.reference_perplexity - 1.0);

  EngineOptions eo;
  eo.max_num_seqs = c.max_num_seqs;
  eo.max_num_batched_tokens = c.max_num_batched_tokens;
  eo.num_speculative_tokens = "auto";
  if (c.speculative == "draft") {
    if (draft_dir_.empty()) throw Error("speculative draft: no draft model");
    eo.speculative = "draft:" + draft_dir_;
  } else {
    eo.speculative = c.speculative;
  }
  LoadedModel draft;
  for (int rep = 0; rep < reps_; ++rep) {
    // A fresh proposer each run: the suffix proposer learns from the requests it has seen, and
    // a second run of the same prompts would be proposed the first run's outputs verbatim.
    EngineConfig ec = engine_config(eo, !lm.model->backend().is_cpu());
    if (const std::string dd = apply_speculation(eo, weights_dir, ec); !dd.empty() && !draft.model)
      draft = load_model(dd, backend_options(mo), load_options(mo));
    double kv = 0;
    TuneSpeed s = run_workload(*lm.model, draft.model.get(), ec, workload_, &kv);
    if (rep == 0 || better_run(s, p.speed, workload_.objective)) p.speed = s;
    p.kv_bytes = kv;
  }
  p.weight_bytes = double(lm.model->weights().total_bytes) + (draft.model ? double(draft.model->weights().total_bytes) : 0.0);
  p.measure_seconds = seconds_since(t0);
  return p;
}

}  // namespace gale::cli
