// Tokenizer encode throughput, single thread: MB/s of UTF-8 input over a text file whose
// documents are separated by U+001E (the file tools/fixtures/gen_tokenizer_fixtures.py --bench
// writes). Compare with tools/fixtures/hf_bench.js on the same machine.
//   tokenizer_bench MODEL_DIR TEXT_FILE [REPEATS]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE [REPEATS]\n", argv[0]);
    return 2;
  }
  int repeats = argc > 3 ? std::atoi(argv[3]) : 3;
  using clock = std::chrono::steady_clock;
  try {
    auto t0 = clock::now();
    auto tok = gale::Tokenizer::load(argv[1]);
    double load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string all = ss.str();
    std::vector<std::string> docs;
    size_t start = 0;
    for (size_t i = 0; i <= all.size(); ++i)
      if (i == all.size() || all[i] == '\x1e') {
        docs.push_back(all.substr(start, i - start));
        start = i + 1;
      }
    size_t n_tokens = 0;
    for (int r = 0; r < repeats; ++r) {
      n_tokens = 0;
      auto a = clock::now();
      for (const auto& d : docs) n_tokens += tok->encode(d, false).size();
      double s = std::chrono::duration<double>(clock::now() - a).count();
      std::printf("%s pass %d: %.2f MB/s (%zu bytes, %zu docs, %zu tokens, %.3f s)%s\n", argv[1], r + 1,
                  double(all.size()) / s / 1e6, all.size(), docs.size(), n_tokens, s, r == 0 ? " [cold cache]" : "");
    }
    std::printf("%s load: %.1f ms\n", argv[1], load_ms);
  } catch (const gale::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
