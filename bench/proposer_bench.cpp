// Cost of one propose() call of the model-free proposers (runtime/token_proposer.h) on a long
// context, as the engine makes them: per step the request grows by the tokens accepted, now and
// then rolls back. Prints microseconds per call beside a naive scan of the whole context (the
// cost the incremental index avoids), and the one-off cost of indexing the prompt.
//   proposer_bench [CONTEXT_TOKENS] [CALLS]   (default 32768, 2000)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <vector>

#include "runtime/token_proposer.h"

namespace {

using clock_type = std::chrono::steady_clock;

// Resident memory of this process in MB (Linux), to show what an index costs.
double resident_mb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return double(resident) * 4096.0 / 1e6;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Text-like tokens: a Zipf-ish vocabulary of 8192 ids, with a fifth of the text copied from
// earlier spans (code edits, quotes), so lookups hit as well as miss.
std::vector<int32_t> make_text(int64_t n, std::mt19937& rng) {
  std::vector<int32_t> t;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  while (int64_t(t.size()) < n) {
    if (t.size() > 64 && u(rng) < 0.02) {
      const size_t len = 8 + rng() % 56, from = rng() % (t.size() - len);
      for (size_t i = 0; i < len && int64_t(t.size()) < n; ++i) t.push_back(t[from + i]);
    } else {
      t.push_back(int32_t(std::pow(8192.0, u(rng))) - 1);
    }
  }
  return t;
}

// The n-gram proposer's answer by a scan of every position per call.
size_t naive_ngram(const std::vector<int32_t>& ctx, int64_t k, std::vector<int32_t>& out) {
  out.clear();
  const int64_t len = int64_t(ctx.size());
  for (int64_t n = 4; n >= 2; --n)
    for (int64_t e = len - 1; e >= n; --e)
      if (std::equal(ctx.begin() + (e - n), ctx.begin() + e, ctx.end() - n)) {
        out.assign(ctx.begin() + e, ctx.begin() + std::min(len, e + k));
        return out.size();
      }
  return 0;
}

struct Run {
  double first_call_us = 0, per_call_us = 0, hit_rate = 0;
};

// calls steps: propose k = 8, accept 1-4 tokens of the text, one call in 16 rolls back 3 first.
Run run(gale::TokenProposer& p, const std::vector<int32_t>& text, int64_t prompt, int64_t calls) {
  Run r;
  std::mt19937 rng(7);
  std::vector<int32_t> ctx(text.begin(), text.begin() + prompt), out;
  auto t0 = clock_type::now();
  p.propose(1, ctx, 8, out);
  r.first_call_us = seconds_since(t0) * 1e6;
  int64_t pos = prompt, hits = 0;
  double total = 0;
  for (int64_t c = 0; c < calls; ++c) {
    if (c % 16 == 15) ctx.resize(ctx.size() - 3), pos -= 3;
    for (int64_t a = 1 + int64_t(rng() % 4); a > 0 && pos < int64_t(text.size()); --a) ctx.push_back(text[size_t(pos++)]);
    t0 = clock_type::now();
    p.propose(1, ctx, 8, out);
    total += seconds_since(t0);
    hits += !out.empty();
  }
  r.per_call_us = total / double(calls) * 1e6;
  r.hit_rate = double(hits) / double(calls);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t context = argc > 1 ? std::atoll(argv[1]) : 32768;
  const int64_t calls = argc > 2 ? std::atoll(argv[2]) : 2000;
  std::mt19937 rng(19);
  const std::vector<int32_t> text = make_text(context + calls * 4, rng);

  double mb = resident_mb();
  auto ngram = gale::make_ngram_proposer({});
  Run n = run(*ngram, text, context, calls);
  std::printf("ngram index of one request: %.1f MB resident\n", resident_mb() - mb);
  std::printf("ngram  (min 2, max 4)  context %lld: first call (indexes the prompt) %.0f us, then %.2f us/call, %.0f%% calls with a proposal\n",
              (long long)context, n.first_call_us, n.per_call_us, 100 * n.hit_rate);

  // The naive scan for scale, on the same contexts without the growth bookkeeping.
  std::vector<int32_t> ctx(text.begin(), text.begin() + context), out;
  auto t0 = clock_type::now();
  const int64_t naive_calls = std::min<int64_t>(calls, 200);
  for (int64_t c = 0; c < naive_calls; ++c) {
    ctx.push_back(text[size_t(context + c)]);
    naive_ngram(ctx, 8, out);
  }
  std::printf("naive scan per call (same contexts): %.2f us/call\n", seconds_since(t0) / double(naive_calls) * 1e6);

  mb = resident_mb();
  auto suffix_alone = gale::make_suffix_proposer({});
  Run a = run(*suffix_alone, text, context, calls);
  std::printf("suffix index of one request: %.1f MB resident\n", resident_mb() - mb);
  std::printf("suffix (max_match 32)  context %lld, empty cache: first call %.0f us, then %.2f us/call, %.0f%% calls with a proposal\n",
              (long long)context, a.first_call_us, a.per_call_us, 100 * a.hit_rate);

  // The suffix proposer with its global cache full of earlier requests of the same text.
  auto suffix = gale::make_suffix_proposer({});
  const int64_t cached = 1 << 20;
  std::mt19937 rng2(23);
  const std::vector<int32_t> history = make_text(cached, rng2);
  mb = resident_mb();
  t0 = clock_type::now();
  for (int64_t i = 0; i < cached; i += 4096)
    suffix->finish(uint64_t(1000 + i), std::span<const int32_t>(history).subspan(size_t(i), 4096));
  std::printf("suffix cache: %lld tokens of finished requests indexed in %.0f ms, %.0f MB resident\n", (long long)cached,
              seconds_since(t0) * 1e3, resident_mb() - mb);
  Run s = run(*suffix, text, context, calls);
  std::printf("suffix (max_match 32)  context %lld: first call %.0f us, then %.2f us/call, %.0f%% calls with a proposal\n",
              (long long)context, s.first_call_us, s.per_call_us, 100 * s.hit_rate);
  return 0;
}
