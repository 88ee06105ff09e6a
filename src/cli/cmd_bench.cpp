// gale bench: prompt-processing and decode speed, next to this machine's rooflines.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "cli/bench_engine.h"
#include "cli/bench_record.h"
#include "cli/build_info.h"
#include "cli/command.h"
#include "cli/engine_options.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/machine_probe.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_bf16.h"
#include "model/model_loader.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct BenchOptions {
  ModelOptions model;
  int64_t prompt = 128;
  int64_t gen = 32;
  int reps = 3;
  int pairs = 16;
  bool json = false;
  bool no_probe = false;
  std::string mode = "kernels";
  EngineOptions engine;
  int64_t requests = 0;  // 0 = the mode's default
  std::string concurrency = "1,2,4,8,16";
  int64_t prefix = 1000, suffix = 16;
  std::string record;  // --record: "" = kDefaultBenchRecord
  std::string prompts_file;  // throughput: prompts cut from this text (tokenized) instead of random ids
  std::string json_schema_file;  // throughput: every request constrained to this schema, against unconstrained
};

// The activations' dtype as the flags leave it: a GPU runs bf16 whatever --dtype says.
std::string act_dtype_name(const BenchOptions& o, bool gpu) {
  return gpu ? "bf16" : (o.model.dtype.empty() ? "f32" : o.model.dtype);
}

// The row --record appends: the object --json prints, and what matching it with other runs needs
// (where the object does not already say it): commit, date, machine, and the settings that
// change the figures. Keys are only added here, never renamed (bench/results/README.md).
nlohmann::json record_row(nlohmann::json j, const BenchOptions& o, const Transformer& m) {
  const bool gpu = !m.backend().is_cpu();
  const std::string card = m.backend().device_model();
  j["record_format"] = 1;
  j["commit"] = build_commit();
  j["date"] = utc_now_iso8601();
  j["machine"] = gpu && !card.empty() ? card : cpu_model_name();
  auto add = [&j](const char* key, nlohmann::json v) {
    if (!j.contains(key)) j[key] = std::move(v);
  };
  add("mode", o.mode);
  add("device", m.backend().name());
  add("dtype", act_dtype_name(o, gpu));
  add("kv_cache_dtype", kv_cache_dtype_name(m.kv_dtype()));
  if (o.mode == "kernels") {
    add("reps", o.reps);
    add("probe", !o.no_probe);
  } else {
    add("block_size", o.engine.block_size);
    add("kv_cache_memory", o.engine.kv_cache_memory.empty() ? "default" : o.engine.kv_cache_memory);
  }
  if (gpu) add("gpu_memory_utilization", o.model.gpu_memory_utilization);
  return j;
}

// Bytes one decode step streams: every matrix once, the embedding table only gathered
// (unless tied, when the LM head streams it), and only the routed experts of an MoE layer.
double decode_bytes_per_token(const Transformer& m) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  // total_bytes counts every tensor once: the embedding table, and the LM head when it is a
  // tensor of its own.
  const double embed = double(c.vocab_size * c.hidden_size) * double(dtype_size(w.embed_dtype));
  double bytes = double(w.total_bytes) - embed;
  if (w.lm_head.w == w.embed) bytes += embed;  // tied: the LM head streams the table
  if (c.num_experts > 0) {
    double experts = 0;
    for (auto& L : w.layers)
      for (auto& e : L.experts) experts += double(e.gate.bytes() + e.up.bytes() + e.down.bytes());
    bytes -= experts * (1.0 - double(c.num_experts_per_tok) / double(c.num_experts));
  }
  return bytes;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

// Multiply-adds x2 of a prefill of n tokens (matrices + attention + one LM-head row).
double prefill_flops(const ModelConfig& c, int64_t n) {
  const double H = double(c.hidden_size), hd = double(c.head_dim), I = double(c.intermediate_size);
  const double qd = double(c.num_heads) * hd, kvd = double(c.num_kv_heads) * hd;
  double ffn = 3 * H * I * (c.num_experts > 0 ? double(c.num_experts_per_tok) : 1.0);
  double per_token = 2 * (H * qd + 2 * H * kvd + qd * H + ffn);
  double attn = 0;  // QK^T and PV over the causal triangle
  for (int64_t t = 0; t < n; ++t) attn += 4.0 * double(t + 1) * qd;
  return double(c.num_layers) * (per_token * double(n) + attn) + 2 * H * double(c.vocab_size);
}

CommandRegistrar reg{40, [](CLI::App& root) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* sub = root.add_subcommand("bench", "Measure prompt processing and decode speed against the machine's limits");
  add_model_options(sub, o->model);
  sub->add_option("--prompt", o->prompt, "Prompt tokens for the prefill test (default 128)")->check(CLI::PositiveNumber);
  sub->add_option("--gen", o->gen, "Tokens for the decode test (default 32)")->check(CLI::PositiveNumber);
  sub->add_option("--reps", o->reps, "Repetitions; the best is reported (default 3)")->check(CLI::PositiveNumber);
  sub->add_flag("--no-probe", o->no_probe, "Skip measuring bandwidth and FMA peak");
  sub->add_option("--pairs", o->pairs,
                  "CPU: decode steps timed alternately with 1 GiB read passes, so that decode and bandwidth are "
                  "measured in the same moments (default 16; 0 = off)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", o->json, "JSON output");
  sub->add_option("--mode", o->mode,
                  "kernels: prefill/decode of one sequence vs the machine (default); throughput: Engine output tok/s "
                  "against --concurrency; shared-prefix: requests sharing a --prefix, prefix cache off vs on; host-tier: a "
                  "--prefix pushed out of the device KV pool and asked for again, host KV tier off vs on")
      ->check(CLI::IsMember({"kernels", "throughput", "shared-prefix", "host-tier"}));
  add_engine_options(sub, o->engine);
  sub->add_option("--requests", o->requests, "Engine modes: requests (default 32 throughput, 64 shared-prefix; host-tier: rounds, default 4)");
  sub->add_option("--concurrency", o->concurrency, "throughput: max-num-seqs values to try (default 1,2,4,8,16)");
  sub->add_option("--json-schema", o->json_schema_file,
                  "throughput: constrain every request to this JSON schema (a file) and compare with the same "
                  "requests unconstrained, alternating (best of --reps)");
  sub->add_option("--prompts-file", o->prompts_file,
                  "throughput: cut the prompts from this text file (tokenized with the model's tokenizer) instead of "
                  "random ids; speculative decoding needs real text to guess")
      ->check(CLI::ExistingFile);
  sub->add_option("--prefix", o->prefix, "shared-prefix, host-tier: shared tokens (default 1000)")->check(CLI::PositiveNumber);
  sub->add_option("--suffix", o->suffix, "shared-prefix, host-tier: distinct tokens per request (default 16)")->check(CLI::PositiveNumber);
  sub->add_option("--record", o->record,
                  std::string("Append one JSON line per run (the --json object plus commit, date, machine) to FILE "
                              "(default ") + kDefaultBenchRecord + ", relative to the current directory); compare "
                              "commits with tools/bench-compare.py")
      ->expected(0, 1)
      ->type_name("[FILE]");
  sub->callback([o, sub] {
    // Opened first: a path that cannot be written fails before the run, a failed run appends nothing.
    std::unique_ptr<BenchRecord> record;
    if (sub->count("--record")) record = std::make_unique<BenchRecord>(o->record.empty() ? kDefaultBenchRecord : o->record);
    auto append_record = [&](const nlohmann::json& j, const Transformer& m) {
      if (!record) return;
      record->append(record_row(j, *o, m));
      std::fprintf(stderr, "recorded to %s\n", record->path().c_str());
    };
    if (o->mode != "kernels") {
      const std::string path = resolve_model(o->model);
      LoadedModel lm = load_model(path, backend_options(o->model), load_options(o->model));
      EngineBenchOptions b;
      b.engine = engine_config(o->engine, !lm.model->backend().is_cpu());
      b.json = o->json;
      LoadedModel draft;
      // Speculation only when --speculative is given: a plain bench run stays comparable with
      // the records of earlier commits (and does not pay for the off run it would add).
      if (o->mode == "throughput" && !o->engine.speculative.empty()) {
        if (std::string dd = apply_speculation(o->engine, path, b.engine, &b.speculative); !dd.empty())
          draft = load_model(dd, backend_options(o->model), load_options(o->model));
        b.draft = draft.model.get();
        b.reps = o->reps;
      }
      if (!o->prompts_file.empty()) {
        if (lm.synthetic || !std::filesystem::exists(std::filesystem::path(path) / "tokenizer.json"))
          throw gale::Error("--prompts-file needs the model's tokenizer.json");
        std::ifstream in(o->prompts_file, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        b.prompt_source = Tokenizer::load(path)->encode(ss.str(), /*add_special_tokens=*/false);
        if (b.prompt_source.empty()) throw gale::Error("--prompts-file " + o->prompts_file + " holds no tokens");
      }
      if (!o->json_schema_file.empty()) {
        if (o->mode != "throughput") throw gale::Error("--json-schema is for --mode throughput");
        if (lm.synthetic || !std::filesystem::exists(std::filesystem::path(path) / "tokenizer.json"))
          throw gale::Error("--json-schema needs the model's tokenizer.json");
        std::ifstream in(o->json_schema_file, std::ios::binary);
        if (!in) throw gale::Error("--json-schema: cannot read " + o->json_schema_file);
        std::stringstream ss;
        ss << in.rdbuf();
        auto tok = Tokenizer::load(path);
        std::vector<int32_t> eos = load_generation_defaults(path, lm.model->config()).eos_token_ids;
        auto t0 = std::chrono::steady_clock::now();
        GrammarCompiler gc(std::make_shared<const TokenTable>(*tok, lm.model->config().vocab_size, eos));
        b.grammar = gc.compile({ConstraintSpec::Kind::JsonSchema, ss.str()});
        b.grammar_compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        b.eos_ids = eos;
        b.reps = o->reps;
      }
      if (o->mode == "throughput") {
        b.requests = o->requests > 0 ? o->requests : 32;
        b.prompt = o->prompt;
        b.gen = o->gen;
        b.concurrency.clear();
        for (int32_t c : parse_id_list(o->concurrency)) {
          if (c <= 0) throw gale::Error("--concurrency values must be > 0");
          b.concurrency.push_back(c);
        }
        append_record(bench_throughput(*lm.model, lm.source, b), *lm.model);
      } else if (o->mode == "host-tier") {
        b.requests = o->requests > 0 ? o->requests : 4;
        b.prefix = o->prefix;
        b.suffix = o->suffix;
        append_record(bench_host_tier(*lm.model, lm.source, b), *lm.model);
      } else {
        b.requests = o->requests > 0 ? o->requests : 64;
        b.prefix = o->prefix;
        b.suffix = o->suffix;
        b.gen = sub->count("--gen") ? o->gen : 8;
        append_record(bench_shared_prefix(*lm.model, lm.source, b), *lm.model);
      }
      return;
    }
    using clock = std::chrono::steady_clock;
    auto secs = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
    const std::string path = resolve_model(o->model);
    auto t_load = clock::now();
    LoadedModel lm = load_model(path, backend_options(o->model), load_options(o->model));
    const double load_s = secs(t_load);
    Transformer& m = *lm.model;
    const ModelConfig& c = m.config();
    const int threads = num_threads();
    double bw = 0, peak = 0;
    const bool gpu = !m.backend().is_cpu();
    const std::string dtype = act_dtype_name(*o, gpu);
    if (!o->no_probe) {
      if (!o->json) std::fprintf(stderr, "measuring memory bandwidth and %s peak...\n", gpu ? "bf16 tensor-core" : "FMA");
      if (!m.backend().probe(&bw, &peak)) {
        bw = cpu::measure_read_bandwidth_gbs(threads);
        peak = cpu::measure_fma_peak_gflops(threads);
      }
    }
    const bool paired = !o->no_probe && !gpu && o->pairs > 0;
    const int64_t bs = 16, total = o->prompt + o->gen + (paired ? o->pairs : 0);
    const int64_t nb = (total + bs - 1) / bs;
    KVCache kv(c, nb, bs, m.kv_format(), &m.backend());
    std::vector<int32_t> table(static_cast<size_t>(nb));
    for (int64_t i = 0; i < nb; ++i) table[size_t(i)] = int32_t(i);
    Rng rng(42);
    std::vector<int32_t> prompt(static_cast<size_t>(o->prompt));
    for (auto& t : prompt) t = int32_t(rng.next() % uint64_t(c.vocab_size));
    std::vector<int32_t> next;
    double best_pp = 1e30, best_tg = 1e30;
    for (int r = 0; r < o->reps; ++r) {
      if (!o->json) std::fprintf(stderr, "run %d/%d: prefill %lld + decode %lld tokens\r", r + 1, o->reps,
                                 (long long)o->prompt, (long long)o->gen);
      auto t0 = clock::now();
      SeqStep s{prompt, 0, table, SeqStep::Logits::Last};
      m.forward_argmax({&s, 1}, kv, next);  // greedy: on a GPU the logits stay there
      best_pp = std::min(best_pp, secs(t0));
      int32_t tok = next[0];
      auto t1 = clock::now();
      for (int64_t i = 0; i < o->gen; ++i) {
        SeqStep d{std::span<const int32_t>(&tok, 1), o->prompt + i, table, SeqStep::Logits::Last};
        m.forward_argmax({&d, 1}, kv, next);
        tok = next[0];
      }
      best_tg = std::min(best_tg, secs(t1));
    }
    // Decode steps alternating with read passes over a 1 GiB buffer: on a shared VM the
    // bandwidth swings within seconds, so each step is compared with the pass right after it.
    const double step_bytes = decode_bytes_per_token(m);
    std::vector<double> pair_decode, pair_read, pair_ratio;
    if (paired) {
      if (!o->json) std::fprintf(stderr, "decode steps alternating with read passes...\n");
      cpu::ReadProbe probe(threads);
      int32_t tok = next[0];
      for (int64_t i = 0; i < o->pairs; ++i) {
        auto t = clock::now();
        SeqStep d{std::span<const int32_t>(&tok, 1), o->prompt + o->gen + i, table, SeqStep::Logits::Last};
        m.forward_argmax({&d, 1}, kv, next);
        tok = next[0];
        const double dec = step_bytes / secs(t) / 1e9, rd = probe.pass_gbs();
        pair_decode.push_back(dec);
        pair_read.push_back(rd);
        pair_ratio.push_back(dec / rd);
      }
    }
    if (!o->json) std::fprintf(stderr, "\n");
    const double pp_tps = double(o->prompt) / best_pp, tg_tps = double(o->gen) / best_tg;
    const double pp_gflops = prefill_flops(c, o->prompt) / best_pp / 1e9;
    const double tg_gbs = step_bytes * tg_tps / 1e9;
    nlohmann::json j = {{"model", lm.source}, {"architecture", c.architecture}, {"threads", threads},
                        {"matmul_isa", gpu ? "cublaslt" : cpu::matmul_isa()}, {"dtype", dtype}, {"load_s", load_s},
                        {"kv_cache_dtype", kv_cache_dtype_name(m.kv_dtype())},
                        {"device", m.backend().name()}, {"prompt_seconds", best_pp},
                        {"prompt_tokens", o->prompt}, {"gen_tokens", o->gen},
                        {"prompt_tokens_per_s", pp_tps}, {"prompt_gflops", pp_gflops},
                        {"decode_tokens_per_s", tg_tps}, {"decode_bytes_per_token", step_bytes},
                        {"decode_gb_per_s", tg_gbs}};
    // `--dtype bf16` products on the CPU take their own path (kernels/cpu/matmul_bf16.h).
    const bool bf16_cpu = !gpu && dtype == "bf16";
    if (bf16_cpu) j["bf16_matmul_path"] = cpu::matmul_bf16_path();
    if (!o->no_probe) {
      j["machine_read_bandwidth_gb_per_s"] = bw;
      j["machine_fma_peak_gflops"] = peak;
      j["decode_fraction_of_bandwidth"] = tg_gbs / bw;
      j["prompt_fraction_of_fma_peak"] = pp_gflops / peak;
    }
    const double paired_decode = median(pair_decode), paired_read = median(pair_read), paired_ratio = median(pair_ratio);
    if (paired) {
      j["pairs"] = o->pairs;
      j["paired_decode_gb_per_s"] = paired_decode;
      j["paired_read_gb_per_s"] = paired_read;
      j["decode_fraction_of_paired_bandwidth"] = paired_ratio;
    }
    if (o->json) {
      std::printf("%s\n", j.dump(2).c_str());
      std::fflush(stdout);  // the figures are out even if recording them fails
      append_record(j, m);
      return;
    }
    std::printf("model        %s (%s), %s activations, %s KV cache, load %.2f s\n", lm.source.c_str(),
                c.architecture.c_str(), dtype.c_str(), kv_cache_dtype_name(m.kv_dtype()), load_s);
    if (gpu) std::printf("device       %s\n", m.backend().name().c_str());
    else if (bf16_cpu)
      std::printf("threads      %d, matmul path %s, bf16 products %s\n", threads, cpu::matmul_isa(),
                  cpu::matmul_bf16_path());
    else std::printf("threads      %d, matmul path %s\n", threads, cpu::matmul_isa());
    if (!o->no_probe)
      std::printf("machine      %s bandwidth %.1f GB/s, %s peak %.1f GFLOP/s\n", gpu ? "copy" : "read", bw,
                  gpu ? "bf16 GEMM" : "FMA", peak);
    std::printf("%-12s %10s %14s %12s\n", "test", "tokens/s", "achieved", "of limit");
    std::printf("%-12s %10.2f %8.1f GFLOP/s %11s\n", ("pp" + std::to_string(o->prompt)).c_str(), pp_tps, pp_gflops,
                o->no_probe ? "-" : (std::to_string(int(100 * pp_gflops / peak + 0.5)) + "% FMA").c_str());
    std::printf("%-12s %10.2f %8.1f GB/s    %11s\n", ("tg" + std::to_string(o->gen)).c_str(), tg_tps, tg_gbs,
                o->no_probe ? "-" : (std::to_string(int(100 * tg_gbs / bw + 0.5)) + "% BW").c_str());
    if (paired)
      std::printf("%-12s %10s %8.1f GB/s    %11s   (medians of %d decode steps each followed by a %.1f GB/s read)\n",
                  "tg paired", "", paired_decode, (std::to_string(int(100 * paired_ratio + 0.5)) + "% BW").c_str(),
                  o->pairs, paired_read);
    std::fflush(stdout);
    append_record(j, m);
  });
}};

}  // namespace
}  // namespace gale::cli
