// Prompt lookup decoding (token_proposer.h): the longest n-gram ending the context that occurred
// earlier, and the tokens that followed its most recent earlier occurrence.
//
// Each request keeps an NgramIndex over its context, brought up to date at every call (the
// tokens accepted since, or the rollback undone), so a call costs a comparison of the context
// with the copy the index holds plus one lookup per n-gram length, instead of a scan of the
// whole context per length.
#include <algorithm>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "runtime/ngram_index.h"
#include "runtime/token_proposer.h"

namespace gale {
namespace {

class NgramProposer final : public TokenProposer {
 public:
  explicit NgramProposer(NgramProposerConfig cfg) : cfg_(cfg) {
    for (int64_t n = cfg.max_ngram; n >= cfg.min_ngram; --n) lengths_.push_back(n);  // longest first
  }

  std::string_view name() const override { return "ngram"; }

  void propose(uint64_t id, std::span<const int32_t> context, int64_t k, std::vector<int32_t>& out) override {
    out.clear();
    auto it = requests_.find(id);
    if (it == requests_.end()) it = requests_.emplace(id, NgramIndex(lengths_)).first;
    NgramIndex& index = it->second;
    index.sync(context);
    if (k <= 0) return;
    const int64_t len = int64_t(context.size());
    for (size_t w = 0; w < lengths_.size(); ++w) {
      const int64_t n = lengths_[w];
      if (n >= len) continue;  // an earlier occurrence needs at least one token before the last n
      const int64_t e = index.latest(w, context.subspan(size_t(len - n)));
      if (e < 0) continue;
      // e < len: the index holds only occurrences a token follows. Positions start at 0 for a
      // request's index (one segment, never dropped), so e is an offset into context.
      const int64_t stop = e + std::min(k, len - e);  // not min(len, e + k): k may be INT64_MAX
      out.assign(context.begin() + e, context.begin() + stop);
      return;
    }
  }

  void finish(uint64_t id, std::span<const int32_t>) override { requests_.erase(id); }

 private:
  NgramProposerConfig cfg_;
  std::vector<int64_t> lengths_;
  std::unordered_map<uint64_t, NgramIndex> requests_;
};

}  // namespace

std::unique_ptr<TokenProposer> make_ngram_proposer(NgramProposerConfig cfg) {
  if (cfg.min_ngram < 1 || cfg.max_ngram < cfg.min_ngram)
    throw Error("ngram proposer: need 1 <= min_ngram <= max_ngram (got " + std::to_string(cfg.min_ngram) + ", " +
                std::to_string(cfg.max_ngram) + ")");
  // Each length is one table and one chain entry per token: far more than a few is waste.
  if (cfg.max_ngram - cfg.min_ngram >= 64)
    throw Error("ngram proposer: at most 64 n-gram lengths (max_ngram - min_ngram < 64)");
  return std::make_unique<NgramProposer>(cfg);
}

}  // namespace gale
