// gale quantize: a 16/32-bit checkpoint folder written as an FP8, INT8 or INT4 one
// (model/quantize_checkpoint.h).
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unistd.h>

#include "cli/command.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "model/quantize_checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }

// "[#########           ] 45%  1.21 / 2.69 GB" redrawn in place on a terminal.
void draw_progress(uint64_t done, uint64_t total) {
  const double f = total ? double(done) / double(total) : 1.0;
  char bar[31];
  const int n = int(f * 30);
  for (int i = 0; i < 30; ++i) bar[i] = i < n ? '#' : ' ';
  bar[30] = 0;
  std::fprintf(stderr, "\rquantize [%s] %3d%%  %.2f / %.2f GB", bar, int(f * 100), double(done) / 1e9,
               double(total) / 1e9);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

struct QuantizeCli {
  std::string model;
  std::string calib;
  int threads = 0;
  QuantizeOptions q;
};

CommandRegistrar reg{75, [](CLI::App& root) {
  auto o = std::make_shared<QuantizeCli>();
  CLI::App* sub = root.add_subcommand("quantize", "Write a 16/32-bit checkpoint folder as an FP8, INT8 or INT4 checkpoint");
  sub->add_option("-m,--model", o->model, "Source model folder (config.json, 16/32-bit *.safetensors)");
  sub->add_option("--out", o->q.out, "Folder to write (must not exist or be empty, unless --force)")->required();
  sub->add_option("--format", o->q.format,
                  "Quantized format: fp8 (default), int8 (per-channel, symmetric) or int4 (groups, zero points); "
                  "integer weights round to nearest");
  sub->add_option("--scheme", o->q.scheme,
                  "fp8: channel (compressed-tensors, per-channel scales; default), tensor (compressed-tensors, one "
                  "scale per matrix) or block128 (transformers' fp8, 128x128 block scales)");
  sub->add_option("--group", o->q.group,
                  "int8/int4: input columns per scale, a multiple of 32, or 0 for one per output channel "
                  "(default: int4 128, int8 per channel)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--symmetric", o->q.symmetric, "int4: symmetric, no zero points");
  sub->add_option("--layout", o->q.layout,
                  "int8/int4: compressed-tensors (pack-quantized; default), int-quantized (INT8) or awq "
                  "(AutoAWQ gemm; INT4 with zero points)");
  add_keep_16bit_option(sub, o->q.keep_16bit);
  sub->add_flag("--awq", o->q.awq,
                "int4: activation-aware scales (AWQ) searched on --calib text on the CPU, folded into the norms "
                "and preceding matrices; writes an ordinary INT4 checkpoint");
  sub->add_option("--calib", o->calib,
                  "--awq's calibration text file (its first 512 tokens; default: the bundled "
                  "models/data/validation-head.txt)");
  sub->add_flag("--force", o->q.force, "Replace --out if it exists and is not empty");
  sub->add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->callback([o] {
    ModelOptions m;
    m.model = o->model;
    m.threads = o->threads;
    o->q.source = resolve_model(m);
    if (!o->calib.empty() && !o->q.awq) throw Error("--calib applies to --awq");
    if (o->q.awq) {
      // Default: the bundled corpus's head (models/data, beside the bundled default model).
      if (o->calib.empty())
        for (const std::string p : {std::string(GALE_DEFAULT_MODEL_DIR) + "/../data/validation-head.txt",
                                    std::string("models/data/validation-head.txt")})
          if (std::filesystem::is_regular_file(p)) {
            o->calib = p;
            break;
          }
      if (o->calib.empty()) throw Error("--awq needs --calib FILE (calibration text); the bundled corpus was not found");
      std::ifstream in(o->calib, std::ios::binary);
      if (!in) throw Error("cannot read --calib " + o->calib);
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      o->q.calib_tokens = Tokenizer::load(o->q.source)->encode(text);
    }
    const bool tty = ::isatty(2);
    // An interrupt stops at the next tensor, so the partial folder is removed on the way out.
    std::signal(SIGINT, on_interrupt);
    std::signal(SIGTERM, on_interrupt);
    o->q.progress = [tty](uint64_t done, uint64_t total) {
      if (g_interrupted) throw Error("interrupted; nothing was written to --out");
      if (tty) draw_progress(done, total);
    };
    const QuantizeSummary s = quantize_checkpoint(o->q);
    std::printf("%s: %s%s; %lld matrices quantized, %lld kept 16-bit, %lld tensors copied; %.3f GB -> %.3f GB in %zu file%s\n",
                s.out.c_str(), s.quantization.c_str(),
                o->q.awq ? (", AWQ scales on " + std::to_string(s.awq_groups) + " groups").c_str() : "",
                (long long)s.quantized, (long long)s.kept_16bit,
                (long long)s.copied, double(s.bytes_in) / 1e9, double(s.bytes_out) / 1e9, s.files,
                s.files == 1 ? "" : "s");
  });
}};

}  // namespace
}  // namespace gale::cli
