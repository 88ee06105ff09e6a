// Progress of a windowed run (gale perplexity, gale eval) on stderr: one updating line on a
// terminal, a line every 50 windows otherwise, nothing when quiet (--json).
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <unistd.h>

namespace gale::cli {

inline std::function<void(int64_t, int64_t)> window_progress(bool quiet) {
  if (quiet) return {};
  const bool tty = isatty(fileno(stderr));
  const auto t0 = std::chrono::steady_clock::now();
  return [tty, t0](int64_t done, int64_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = done > 0 ? s / double(done) * double(total - done) : 0;
    if (tty) {
      std::fprintf(stderr, "\rwindow %lld/%lld  %.0f%%  eta %.0fs   ", (long long)done, (long long)total,
                   100.0 * double(done) / double(total), eta);
      if (done == total) std::fprintf(stderr, "\n");
    } else if (done % 50 == 0 || done == total) {
      std::fprintf(stderr, "window %lld/%lld\n", (long long)done, (long long)total);
    }
  };
}

}  // namespace gale::cli
