// gale generate: stream a completion of a prompt (text or ids).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/command.h"
#include "cli/model_options.h"
#include "cli/engine_options.h"
#include "cli/parallel_options.h"
#include "core/checked_math.h"
#include "core/error.h"
#include "engine/engine.h"
#include "loader/model_config.h"
#include "model/model_loader.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct GenerateOptions {
  ModelOptions model;
  EngineOptions engine;
  ParallelOptions parallel;
  std::string prompt;
  std::string ids;
  int64_t n = 128;
  std::optional<float> temperature, top_p, min_p;
  std::optional<int> top_k;
  std::optional<float> repetition_penalty;
  float presence_penalty = 0, frequency_penalty = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool json = false;
  // Constrained decoding (at most one): a JSON schema file, json_object, a regex, a GBNF file,
  // or a list of choices.
  std::string json_schema_file, regex, grammar_file;
  bool json_object = false;
  std::vector<std::string> choice;
};

std::string read_text_file(const std::string& path, const char* flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(std::string(flag) + ": cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ConstraintSpec constraint_of(const GenerateOptions& o) {
  ConstraintSpec c;
  int n = 0;
  if (!o.json_schema_file.empty()) ++n, c = {ConstraintSpec::Kind::JsonSchema, read_text_file(o.json_schema_file, "--json-schema")};
  if (o.json_object) ++n, c = {ConstraintSpec::Kind::JsonObject, ""};
  if (!o.regex.empty()) ++n, c = {ConstraintSpec::Kind::Regex, o.regex};
  if (!o.grammar_file.empty()) ++n, c = {ConstraintSpec::Kind::Grammar, read_text_file(o.grammar_file, "--grammar")};
  if (!o.choice.empty()) ++n, c = {ConstraintSpec::Kind::Choice, nlohmann::json(o.choice).dump()};
  if (n > 1) throw Error("give at most one of --json-schema, --json-object, --regex, --grammar and --choice");
  return c;
}

void run_generate(const GenerateOptions& o) {
  using clock = std::chrono::steady_clock;
  ParallelRun par(o.parallel);  // --tp: this process's rank; outlives the model and the engine
  const std::string dir = resolve_model(o.model);
  auto t0 = clock::now();
  LoadedModel lm = load_model(dir, par.with_group(backend_options(o.model)), load_options(o.model));
  if (par.follower()) return par.follow(*lm.model);  // ranks 1..N-1: rank 0's steps, then exit 0
  const ModelConfig& cfg = lm.model->config();
  std::unique_ptr<Tokenizer> tok;
  if (!lm.synthetic && std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json"))
    tok = Tokenizer::load(dir);
  double load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();

  RequestParams req;
  if (!o.ids.empty()) {
    req.prompt = parse_id_list(o.ids);
  } else {
    if (!tok) throw Error("-p needs a tokenizer.json in " + dir + "; pass token ids with --ids instead");
    req.prompt = tok->encode(o.prompt, /*add_special_tokens=*/true);
  }
  if (req.prompt.empty()) throw Error("the prompt is empty");
  if (o.n < 0) throw Error("-n must be >= 0");
  req.max_tokens = o.n;
  GenerationDefaults gd = lm.synthetic ? GenerationDefaults{} : load_generation_defaults(dir, cfg);
  req.eos_ids = gd.eos_token_ids;
  // Sampling: flags win; otherwise generation_config.json's defaults (greedy unless do_sample).
  SamplingParams& sp = req.sampling;
  sp.temperature = o.temperature.value_or(gd.do_sample ? gd.temperature : 0.0f);
  sp.top_k = o.top_k.value_or(gd.do_sample ? gd.top_k : 0);
  sp.top_p = o.top_p.value_or(gd.do_sample ? gd.top_p : 1.0f);
  sp.min_p = o.min_p.value_or(gd.do_sample ? gd.min_p : 0.0f);
  sp.repetition_penalty = o.repetition_penalty.value_or(gd.repetition_penalty);
  sp.presence_penalty = o.presence_penalty;
  sp.frequency_penalty = o.frequency_penalty;
  sp.seed = o.seed ? *o.seed : std::random_device{}();
  req.ignore_eos = o.ignore_eos;
  req.speculative = request_speculates(o.engine, o.seed.has_value(), sp.temperature);
  req.stop = o.stop;
  req.constraint = constraint_of(o);
  if (req.constraint.active() && !tok) throw Error("--json-schema, --regex, --grammar and --choice need a tokenizer");

  // One request through the Engine (the same path as batch mode and the server).
  EngineConfig ec = engine_config(o.engine, !lm.model->backend().is_cpu());
  ec.max_num_seqs = 1;
  ec.followers = par.followers();
  LoadedModel draft;  // speculative decoding's draft model, when one proposes
  if (std::string dd = apply_speculation(o.engine, dir, ec); !dd.empty())
    draft = load_model(dd, backend_options(o.model), load_options(o.model));
  if (o.engine.kv_cache_memory.empty()) {
    // Just what this request needs, and never more than the context: past it add_request
    // refuses the request by name, so a huge -n must not first size (or wrap) the cache. A
    // verify may write up to 16 positions past the last token (its proposals); a draft's block
    // is paid for beside the target's.
    int64_t tokens = add_sat(int64_t(req.prompt.size()), o.n);
    if (int64_t ctx = context_limit(cfg); ctx > 0) tokens = std::min(tokens, ctx);
    int64_t per_token = int64_t(KVCache::bytes_per_token(cfg, lm.model->kv_dtype()));
    if (draft.model) per_token += int64_t(KVCache::bytes_per_token(draft.model->config(), draft.model->kv_dtype()));
    ec.kv_cache_bytes = mul_sat(add_sat(tokens, ec.block_size + kMaxSpeculativeTokens), per_token);
  }
  Engine engine(*lm.model, tok.get(), ec, draft.model.get());
  struct {
    std::vector<int32_t> ids;
    std::string text, finish_reason;
    int64_t prompt_tokens = 0;
    double prefill_ms = 0, decode_ms = 0, ttft_ms = 0;
  } r;
  r.prompt_tokens = int64_t(req.prompt.size());
  auto ms_since = [](clock::time_point a) { return std::chrono::duration<double, std::milli>(clock::now() - a).count(); };
  const auto t_start = clock::now();
  auto t_first = t_start;
  engine.add_request(req);
  while (engine.has_unfinished()) {
    for (RequestOutput& out : engine.step()) {
      if (r.ids.empty() && !out.new_ids.empty()) {
        t_first = clock::now();
        r.ttft_ms = r.prefill_ms = ms_since(t_start);
      }
      r.ids.insert(r.ids.end(), out.new_ids.begin(), out.new_ids.end());
      r.text += out.new_text;
      if (!o.json && !out.new_text.empty()) {
        std::fwrite(out.new_text.data(), 1, out.new_text.size(), stdout);
        std::fflush(stdout);
      }
      if (out.finished && out.finish_reason == "error") throw Error(out.error);  // one request: the run failed
      if (out.finished) r.finish_reason = out.finish_reason;
    }
  }
  if (!r.ids.empty()) r.decode_ms = ms_since(t_first);
  const int64_t n_gen = int64_t(r.ids.size());
  if (o.json) {
    nlohmann::json j;
    j["ids"] = r.ids;
    j["text"] = r.text;
    j["finish_reason"] = r.finish_reason;
    j["seed"] = sp.seed;
    j["usage"] = {{"prompt_tokens", r.prompt_tokens}, {"completion_tokens", n_gen},
                  {"total_tokens", r.prompt_tokens + n_gen}};
    j["timings"] = {{"load_ms", load_ms}, {"prefill_ms", r.prefill_ms}, {"decode_ms", r.decode_ms},
                    {"ttft_ms", r.ttft_ms},
                    {"prefill_tokens_per_s", r.prefill_ms > 0 ? 1000.0 * double(r.prompt_tokens) / r.prefill_ms : 0.0},
                    {"decode_tokens_per_s",
                     r.decode_ms > 0 && n_gen > 1 ? 1000.0 * double(n_gen - 1) / r.decode_ms : 0.0}};
    if (ec.num_speculative_tokens > 0) {
      const EngineStats st = engine.stats();
      j["speculative"] = {{"acceptance_rate", st.acceptance_rate()},
                          {"mean_accepted_length", st.mean_accepted_length()},
                          {"verifies", st.spec_verifies},
                          {"proposer_seconds", st.spec_proposer_seconds}};
    }
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    if (!tok) {  // no tokenizer: print ids
      for (size_t i = 0; i < r.ids.size(); ++i) std::printf("%s%d", i ? " " : "", r.ids[i]);
    }
    std::printf("\n");
    std::fprintf(stderr, "[%lld prompt tokens, %lld generated (%s); prefill %.1f tok/s, decode %.1f tok/s]\n",
                 (long long)r.prompt_tokens, (long long)n_gen, r.finish_reason.c_str(),
                 r.prefill_ms > 0 ? 1000.0 * double(r.prompt_tokens) / r.prefill_ms : 0.0,
                 r.decode_ms > 0 && n_gen > 1 ? 1000.0 * double(n_gen - 1) / r.decode_ms : 0.0);
    if (ec.num_speculative_tokens > 0) {
      const EngineStats st = engine.stats();
      std::fprintf(stderr, "[speculative: %lld verifies, acceptance %.2f, mean accepted length %.2f]\n",
                   (long long)st.spec_verifies, st.acceptance_rate(), st.mean_accepted_length());
    }
  }
}

CommandRegistrar reg{10, [](CLI::App& root) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* sub = root.add_subcommand("generate", "Generate text from a prompt (streams to stdout)");
  add_model_options(sub, o->model);
  add_engine_options(sub, o->engine, /*many_seqs=*/false);
  add_parallel_options(sub, o->parallel);
  auto* p = sub->add_option("-p,--prompt", o->prompt, "Prompt text");
  auto* ids = sub->add_option("--ids", o->ids, "Prompt as comma-separated token ids");
  p->excludes(ids);
  sub->add_option("-n,--max-tokens", o->n, "Number of tokens to generate (default 128)");
  sub->add_option("--temperature", o->temperature, "Sampling temperature (0 = greedy)");
  sub->add_option("--top-k", o->top_k, "Keep the k most likely tokens (0 = off)");
  sub->add_option("--top-p", o->top_p, "Nucleus sampling mass (1 = off)");
  sub->add_option("--min-p", o->min_p, "Drop tokens below min_p x p(max) (0 = off)");
  sub->add_option("--repetition-penalty", o->repetition_penalty, "HF repetition penalty (1 = off)");
  sub->add_option("--presence-penalty", o->presence_penalty, "OpenAI presence penalty");
  sub->add_option("--frequency-penalty", o->frequency_penalty, "OpenAI frequency penalty");
  sub->add_option("--seed", o->seed, "Random seed (same seed, same output)");
  sub->add_option("--stop", o->stop, "Stop string (repeatable); never printed");
  sub->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-sequence tokens");
  sub->add_flag("--json", o->json, "Print one JSON object {ids, text, usage, timings} at the end");
  sub->add_option("--json-schema", o->json_schema_file, "Constrain the output to this JSON schema (a file)");
  sub->add_flag("--json-object", o->json_object, "Constrain the output to a JSON object");
  sub->add_option("--regex", o->regex, "Constrain the output to match this regex (whole output)");
  sub->add_option("--grammar", o->grammar_file, "Constrain the output to this GBNF grammar (a file; rule root)");
  sub->add_option("--choice", o->choice, "Constrain the output to one of these strings (comma-separated; repeatable)")
      ->delimiter(',');
  sub->callback([o, sub] {
    if (sub->count("--prompt") == 0 && sub->count("--ids") == 0) throw Error("give a prompt with -p TEXT or --ids 1,2,3");
    run_generate(*o);
  });
}};

}  // namespace
}  // namespace gale::cli
