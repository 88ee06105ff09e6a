// gale prune: a 16/32-bit checkpoint folder written with weights removed (model/prune.h), and
// with --eval FILE its report: size, perplexity, KL and top-1 against the original (gale eval's
// figures, engine/eval_compare.h) and greedy decode speed of both, measured side by side.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.h"
#include "cli/model_options.h"
#include "cli/progress.h"
#include "core/error.h"
#include "engine/eval_compare.h"
#include "model/kv_cache.h"
#include "model/model_loader.h"
#include "model/prune.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }

struct PruneCli {
  std::string model;
  std::string calib;
  std::string eval;    // --eval FILE: the report's text
  int64_t ctx = 512;   // --ctx of the report's windows
  int64_t gen = 64;    // decode tokens per timed run
  int reps = 5;        // timed runs of each model, alternating; the best kept
  bool json = false;
  int threads = 0;
  PruneOptions p;
};

std::string read_text(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(std::string("cannot read ") + flag + " " + path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Seconds for `gen` greedy decode steps after a 16-token prompt (best of the runs given).
double decode_seconds(Transformer& m, int64_t gen) {
  const int64_t bs = 16, prompt = 16, nb = (prompt + gen + bs - 1) / bs;
  KVCache kv(m.config(), nb, bs, m.kv_format(), &m.backend());
  std::vector<int32_t> table(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; ++i) table[size_t(i)] = int32_t(i);
  std::vector<int32_t> ids(static_cast<size_t>(prompt)), next;
  for (int64_t i = 0; i < prompt; ++i) ids[size_t(i)] = int32_t((i * 7919 + 13) % m.config().vocab_size);
  SeqStep s{ids, 0, table, SeqStep::Logits::Last};
  m.forward_argmax({&s, 1}, kv, next);
  int32_t tok = next[0];
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < gen; ++i) {
    SeqStep d{std::span<const int32_t>(&tok, 1), prompt + i, table, SeqStep::Logits::Last};
    m.forward_argmax({&d, 1}, kv, next);
    tok = next[0];
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json report(const PruneCli& o, const PruneSummary& s) {
  const std::string text = read_text(o.eval, "--eval");
  ModelOptions mo;
  mo.threads = o.threads;
  LoadedModel pruned = load_model(s.out, backend_options(mo), load_options(mo));
  LoadedModel orig = load_model(o.p.source, backend_options(mo), load_options(mo));
  check_comparable(*pruned.model, *orig.model);
  const std::vector<int32_t> ids = Tokenizer::load(o.p.source)->encode(text, /*add_special_tokens=*/true);
  const int64_t ctx = std::min(o.ctx, orig.model->config().max_position_embeddings);
  const int64_t stride = std::max<int64_t>(1, ctx / 2);
  const EvalResult r = eval_compare(*pruned.model, *orig.model, ids, ctx, stride, window_progress(o.json));
  double tp = 1e30, to = 1e30;
  for (int i = 0; i < o.reps; ++i) {  // alternating, so both see the same machine
    to = std::min(to, decode_seconds(*orig.model, o.gen));
    tp = std::min(tp, decode_seconds(*pruned.model, o.gen));
  }
  return {{"method", s.method},
          {"sparsity", s.sparsity},
          {"change", s.change},
          {"out", s.out},
          {"weight_bytes", pruned.model->weights().total_bytes},
          {"reference_weight_bytes", orig.model->weights().total_bytes},
          {"params", s.params_out},
          {"reference_params", s.params_in},
          {"zeros", s.zeros},
          {"perplexity", r.model.ppl},
          {"reference_perplexity", r.reference.ppl},
          {"perplexity_change", r.model.ppl / r.reference.ppl - 1.0},
          {"kl_divergence", r.kl_mean},
          {"kl_p99", r.kl_p99},
          {"kl_max", r.kl_max},
          {"top1_agreement", r.top1_agreement},
          {"scored_tokens", r.positions},
          {"ctx", ctx},
          {"stride", stride},
          {"eval_file", o.eval},
          {"decode_tokens_per_s", double(o.gen) / tp},
          {"reference_decode_tokens_per_s", double(o.gen) / to},
          {"decode_speedup", to / tp},
          {"decode_tokens", o.gen},
          {"reps", o.reps}};
}

CommandRegistrar reg{76, [](CLI::App& root) {
  auto o = std::make_shared<PruneCli>();
  CLI::App* sub = root.add_subcommand("prune", "Write a 16/32-bit checkpoint folder with weights pruned (sparse or smaller)");
  sub->add_option("-m,--model", o->model, "Source model folder (config.json, 16/32-bit *.safetensors)");
  sub->add_option("--out", o->p.out, "Folder to write (must not exist or be empty, unless --force)")->required();
  sub->add_option("--method", o->p.method,
                  "magnitude | wanda (unstructured zeros, per row) | 2:4 (2 of every 4 input weights) | ffn-channels | "
                  "heads (whole KV groups) | layers (structured: a smaller dense checkpoint)")
      ->required();
  sub->add_option("--sparsity", o->p.sparsity,
                  "Fraction removed, in [0, 1): of each row's weights (magnitude, wanda), of the FFN channels, KV "
                  "groups or layers (rounded to a whole count, the same in every layer); 2:4 is 0.5");
  sub->add_option("--score", o->p.score, "2:4: the score compared in each group of 4: magnitude (default) or wanda");
  sub->add_option("--calib", o->calib,
                  "Calibration text (its first --calib-tokens tokens run on the CPU): required by wanda, "
                  "ffn-channels, heads, layers and 2:4 --score wanda");
  sub->add_option("--calib-tokens", o->p.calib_max_tokens, "Calibration tokens run, in windows of 512 (default 4096)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--no-refit", [o](int64_t) { o->p.refit = false; },
                "ffn-channels: keep down's remaining columns as they were (default: refit by least squares to the "
                "full MLP's outputs on the calibration text)");
  sub->add_option("--eval", o->eval,
                  "After writing, report on this text: size, perplexity, KL and top-1 against the source (as gale "
                  "eval), and decode speed of both; also written to OUT/prune_report.json");
  sub->add_option("--ctx", o->ctx, "--eval's window length in tokens (default 512, stride half of it)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--reps", o->reps, "--eval's timed decode runs of each model, alternating; the best kept (default 5)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--gen", o->gen, "--eval's decode tokens per timed run (default 64)")->check(CLI::PositiveNumber);
  sub->add_flag("--json", o->json, "JSON output");
  sub->add_flag("--force", o->p.force, "Replace --out if it exists and is not empty");
  sub->add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->callback([o] {
    // Flag errors first, before anything is read.
    const PruneMethod method = parse_prune_method(o->p.method);
    if (prune_needs_calibration(method, o->p.score) && o->calib.empty())
      throw Error("--method " + o->p.method + (method == PruneMethod::Semi24 ? " --score wanda" : "") +
                  " measures activations: it needs --calib FILE (calibration text)");
    if (!o->calib.empty() && !prune_needs_calibration(method, o->p.score))
      throw Error("--calib applies to wanda, ffn-channels, heads, layers and 2:4 --score wanda");
    ModelOptions m;
    m.model = o->model;
    m.threads = o->threads;
    o->p.source = resolve_model(m);
    if (!o->calib.empty())
      o->p.calib_tokens = Tokenizer::load(o->p.source)->encode(read_text(o->calib, "--calib"), /*add_special_tokens=*/true);
    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    o->p.progress = [](uint64_t, uint64_t) {
      if (g_interrupted) throw Error("interrupted; nothing was written to --out");
    };
    const PruneSummary s = prune_checkpoint(o->p);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (o->eval.empty()) {
      if (o->json) {
        nlohmann::json j = {{"method", s.method}, {"sparsity", s.sparsity}, {"change", s.change}, {"out", s.out},
                            {"matrices", s.matrices}, {"params", s.params_out}, {"reference_params", s.params_in},
                            {"zeros", s.zeros}, {"bytes", s.bytes_out}, {"reference_bytes", s.bytes_in}, {"files", s.files}};
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%s: %s %.3g: %s; %llu -> %llu parameters (%llu zeros); %.2f MB -> %.2f MB in %zu file%s\n",
                    s.out.c_str(), s.method.c_str(), s.sparsity, s.change.c_str(), (unsigned long long)s.params_in,
                    (unsigned long long)s.params_out, (unsigned long long)s.zeros, double(s.bytes_in) / 1e6,
                    double(s.bytes_out) / 1e6, s.files, s.files == 1 ? "" : "s");
      }
      return;
    }
    const nlohmann::json r = report(*o, s);
    {
      std::ofstream f(std::filesystem::path(s.out) / "prune_report.json", std::ios::binary);
      f << r.dump(2) << "\n";
      if (!f) throw Error("cannot write " + s.out + "/prune_report.json");
    }
    if (o->json) {
      std::printf("%s\n", r.dump().c_str());
      return;
    }
    auto mib = [](const nlohmann::json& b) { return b.get<double>() / double(1 << 20); };
    std::printf("%s: %s %.3g: %s\n", s.out.c_str(), s.method.c_str(), s.sparsity, s.change.c_str());
    std::printf("%-22s %-14s %s\n", "", "pruned", "original");
    std::printf("%-22s %-14.2f %.2f\n", "weights (MiB)", mib(r["weight_bytes"]), mib(r["reference_weight_bytes"]));
    std::printf("%-22s %-14llu %llu\n", "parameters", (unsigned long long)s.params_out, (unsigned long long)s.params_in);
    std::printf("%-22s %-14llu %d\n", "zeros written", (unsigned long long)s.zeros, 0);
    std::printf("%-22s %-14.4f %.4f  (%+.2f%%)\n", "perplexity", r["perplexity"].get<double>(),
                r["reference_perplexity"].get<double>(), 100 * r["perplexity_change"].get<double>());
    std::printf("%-22s %-14.1f %.1f  (x%.3f)\n", "decode tokens/s", r["decode_tokens_per_s"].get<double>(),
                r["reference_decode_tokens_per_s"].get<double>(), r["decode_speedup"].get<double>());
    std::printf("KL(original || pruned)  mean %.6f  p99 %.6f  max %.6f\n", r["kl_divergence"].get<double>(),
                r["kl_p99"].get<double>(), r["kl_max"].get<double>());
    std::printf("top-1 agreement         %.4f  (%lld positions of %s, windows of %lld)\n",
                r["top1_agreement"].get<double>(), (long long)r["scored_tokens"].get<int64_t>(), o->eval.c_str(),
                (long long)r["ctx"].get<int64_t>());
  });
}};

}  // namespace
}  // namespace gale::cli
