// libFuzzer: both model-free proposers (runtime/token_proposer.h) driven by arbitrary bytes read
// as a configuration and a list of operations on a few requests: grow a context (small-alphabet
// or raw 32-bit tokens, negative ones included), shrink it (a rollback), propose with any k
// (0, negative, huge), finish. Checked: no crash or sanitizer report, never more than k tokens,
// and the n-gram proposer's answer equal to a scan of the context.
#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/token_proposer.h"

namespace {

struct Reader {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  int32_t word() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | byte();
    int32_t t;
    std::memcpy(&t, &v, sizeof t);
    return t;
  }
};

std::vector<int32_t> ngram_scan(const std::vector<int32_t>& ctx, int64_t k, int64_t min_n, int64_t max_n) {
  const int64_t len = int64_t(ctx.size());
  if (k <= 0) return {};
  for (int64_t n = max_n; n >= min_n; --n) {
    if (n >= len) continue;
    for (int64_t e = len - 1; e >= n; --e)
      if (std::equal(ctx.begin() + (e - n), ctx.begin() + e, ctx.end() - n))
        return std::vector<int32_t>(ctx.begin() + e, ctx.begin() + e + std::min(k, len - e));
  }
  return {};
}

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  const int64_t min_n = 1 + r.byte() % 4;
  const int64_t max_n = min_n + r.byte() % 4;
  const gale::SuffixProposerConfig scfg{.max_match = 1 + r.byte() % 40,
                                        .max_cached_tokens = int64_t(r.byte()) * 4,
                                        .min_probability = float(r.byte() % 11) / 10.0f};
  auto ngram = gale::make_ngram_proposer({.min_ngram = min_n, .max_ngram = max_n});
  auto suffix = gale::make_suffix_proposer(scfg);
  constexpr size_t kRequests = 4, kMaxLen = 2048;
  std::vector<std::vector<int32_t>> ctx(kRequests);
  std::vector<int32_t> out;
  while (!r.empty()) {
    const uint8_t op = r.byte();
    std::vector<int32_t>& c = ctx[(op >> 2) % kRequests];
    const uint64_t id = (op >> 2) % kRequests;
    switch (op & 3) {
      case 0: {  // propose
        const uint8_t kb = r.byte();
        const int64_t k = kb == 255 ? INT64_MAX : kb == 254 ? -1 : int64_t(kb % 12);
        ngram->propose(id, c, k, out);
        check(out == ngram_scan(c, k, min_n, max_n));
        suffix->propose(id, c, k, out);
        check(k > 0 ? int64_t(out.size()) <= k : out.empty());
        break;
      }
      case 1: {  // grow: a run of small-alphabet tokens, or one raw 32-bit token
        const uint8_t g = r.byte();
        if (g & 1) {
          if (c.size() < kMaxLen) c.push_back(r.word());
        } else {
          for (int i = 0; i < (g >> 1) % 16 && c.size() < kMaxLen; ++i) c.push_back(int32_t(r.byte() % 5) - 2);
        }
        break;
      }
      case 2: {  // shrink (a rollback)
        const size_t n = std::min<size_t>(c.size(), r.byte() % 16);
        c.resize(c.size() - n);
        break;
      }
      case 3:  // finish: the context may feed the suffix cache; the id starts afresh
        ngram->finish(id, c);
        suffix->finish(id, c);
        c.clear();
        break;
    }
  }
  return 0;
}
