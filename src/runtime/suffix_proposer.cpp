// SuffixDecoding's idea (token_proposer.h) without a suffix tree: the counts a suffix tree keeps
// at its nodes are counted at query time over the occurrences of the matched suffix, which an
// NgramIndex finds. Two indexes: one per live request over its context, one global over the
// contexts finished requests passed to finish() (at most max_cached_tokens, oldest request
// dropped first).
//
// Why not a tree: a tree over every suffix up to max_match + k tokens deep holds up to that many
// nodes per token (a request that rewrites a file repeats it: every substring occurs twice), and
// a live request's tree must also grow and roll back at its tail. The index holds a constant
// number of entries per token (one per anchor length below) and undoes growth exactly.
//
// What a call computes, per source (the request's context, then the cache):
//   1. m: the longest suffix of the context, at most max_match tokens, that occurred earlier in
//      the source with a token after it (the request's own last tokens are not "earlier"; a
//      match never crosses from one cached request into another). The anchors are n-gram
//      lengths 1, 2, 4, ... up to max_match: the longest anchor whose n-gram ends the context
//      and occurred earlier bounds m from below, and every occurrence of the m-token suffix is
//      on that anchor's chain, so extending each chain entry backwards finds m and all of them.
//   2. The occurrences of that suffix, most recent first, at most kMaxOccurrences of the
//      anchor's (beyond that the chain is not walked: a degenerate context such as one token
//      repeated for thousands of positions costs the same as any other).
// The source with the longer match wins, the request's own on a tie (its text is the likelier
// continuation). Then greedily: at step j the live occurrences are those that agreed on every
// token proposed so far; the token most of them have next is proposed (a tie goes to the one
// seen at the most recent occurrence), the path's probability multiplied by
// (occurrences having it next) / (live occurrences, those that reached the end of their request
// included), and proposing stops before a token that would take the probability below
// min_probability, when no live occurrence has a next token, or at k tokens.
#include <algorithm>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "runtime/ngram_index.h"
#include "runtime/token_proposer.h"

namespace gale {
namespace {

constexpr int64_t kMaxOccurrences = 256;
constexpr int64_t kMaxMatchLimit = 1024;  // each anchor is hashed for every token appended

std::vector<int64_t> anchor_lengths(int64_t max_match) {
  std::vector<int64_t> lengths{max_match};  // longest first
  int64_t p = 1;
  while (p * 2 < max_match) p *= 2;
  for (; p >= 1; p /= 2)
    if (p < max_match) lengths.push_back(p);
  return lengths;
}

struct Occurrence {
  int64_t end;    // the matched tokens end here; the continuation starts at this position
  int64_t limit;  // end of its segment: the continuation stops before it
};

struct Match {
  int64_t length = 0;
  std::vector<Occurrence> occurrences;  // most recent first
};

// Only a match longer than `must_beat` is of use to the caller: an anchor whose longer neighbour
// missed bounds the match from above, so a source that cannot beat it is not walked.
Match longest_match(const NgramIndex& index, std::span<const int32_t> context, int64_t max_match, int64_t must_beat) {
  Match m;
  const int64_t len = int64_t(context.size());
  std::span<const int64_t> lengths = index.lengths();
  for (size_t w = 0; w < lengths.size(); ++w) {
    const int64_t a = lengths[w];
    if (a > len) continue;
    int64_t e = index.latest(w, context.subspan(size_t(len - a)));
    if (e < 0) continue;
    const int64_t at_most = std::min(len, w == 0 ? max_match : lengths[w - 1] - 1);
    if (at_most <= must_beat) return m;
    for (int64_t walked = 0; e >= 0 && walked < kMaxOccurrences; ++walked, e = index.previous(w, e)) {
      const auto [seg_begin, seg_end] = index.segment_bounds(e);
      const int64_t limit = std::min(at_most, e - seg_begin);
      int64_t ell = a;  // the anchor matched already
      while (ell < limit && index.at(e - 1 - ell) == context[size_t(len - 1 - ell)]) ++ell;
      if (ell > m.length) {
        m.length = ell;
        m.occurrences.clear();
      }
      if (ell == m.length) m.occurrences.push_back({e, seg_end});
    }
    return m;  // shorter anchors only find what this one's chain held
  }
  return m;
}

void follow(const NgramIndex& index, Match& m, int64_t k, double min_probability, std::vector<int32_t>& out) {
  std::vector<Occurrence>& live = m.occurrences;
  struct Next {
    int32_t token;
    int32_t rank;  // position in `live`: recency
  };
  std::vector<Next> next;
  double probability = 1.0;
  for (int64_t j = 0; j < k && !live.empty(); ++j) {
    next.clear();
    for (size_t r = 0; r < live.size(); ++r)
      if (live[r].end + j < live[r].limit) next.push_back({index.at(live[r].end + j), int32_t(r)});
    if (next.empty()) break;
    std::sort(next.begin(), next.end(),
              [](const Next& a, const Next& b) { return a.token != b.token ? a.token < b.token : a.rank < b.rank; });
    int64_t best_count = 0;
    int32_t best_rank = 0, best_token = 0;
    for (size_t i = 0; i < next.size();) {
      size_t g = i;
      while (g < next.size() && next[g].token == next[i].token) ++g;
      const int64_t count = int64_t(g - i);
      if (count > best_count || (count == best_count && next[i].rank < best_rank)) {
        best_count = count;
        best_rank = next[i].rank;
        best_token = next[i].token;
      }
      i = g;
    }
    const double p = probability * double(best_count) / double(live.size());
    if (p < min_probability) break;
    probability = p;
    out.push_back(best_token);
    std::erase_if(live, [&](const Occurrence& o) { return o.end + j >= o.limit || index.at(o.end + j) != best_token; });
  }
}

class SuffixProposer final : public TokenProposer {
 public:
  explicit SuffixProposer(SuffixProposerConfig cfg)
      : cfg_(cfg), anchors_(anchor_lengths(cfg.max_match)), cache_(anchors_) {}

  std::string_view name() const override { return "suffix"; }

  void propose(uint64_t id, std::span<const int32_t> context, int64_t k, std::vector<int32_t>& out) override {
    out.clear();
    auto it = requests_.find(id);
    if (it == requests_.end()) it = requests_.emplace(id, NgramIndex(anchors_)).first;
    it->second.sync(context);
    if (k <= 0 || context.empty()) return;
    Match own = longest_match(it->second, context, cfg_.max_match, 0);
    Match cached = longest_match(cache_, context, cfg_.max_match, own.length);
    const bool use_own = own.length >= cached.length;
    Match& best = use_own ? own : cached;
    if (best.length == 0) return;
    follow(use_own ? it->second : cache_, best, k, double(cfg_.min_probability), out);
  }

  void finish(uint64_t id, std::span<const int32_t> context) override {
    requests_.erase(id);
    const int64_t keep = std::min<int64_t>(int64_t(context.size()), cfg_.max_cached_tokens);
    if (keep <= 0) return;
    // A request longer than the whole cache leaves its last tokens: the nearest to what follows.
    std::span<const int32_t> tail = context.last(size_t(keep));
    while (cache_.size() + keep > cfg_.max_cached_tokens) cache_.drop_first_segment();
    cache_.start_segment();
    cache_.append(tail);
  }

 private:
  SuffixProposerConfig cfg_;
  std::vector<int64_t> anchors_;
  NgramIndex cache_;
  std::unordered_map<uint64_t, NgramIndex> requests_;
};

}  // namespace

std::unique_ptr<TokenProposer> make_suffix_proposer(SuffixProposerConfig cfg) {
  if (cfg.max_match < 1 || cfg.max_match > kMaxMatchLimit)
    throw Error("suffix proposer: max_match must be in [1, " + std::to_string(kMaxMatchLimit) + "] (got " +
                std::to_string(cfg.max_match) + ")");
  // The cache's store keeps int32 offsets and holds up to twice its live tokens between compactions.
  if (cfg.max_cached_tokens < 0 || cfg.max_cached_tokens > (int64_t(1) << 30))
    throw Error("suffix proposer: max_cached_tokens must be in [0, 2^30] (got " +
                std::to_string(cfg.max_cached_tokens) + ")");
  if (!(cfg.min_probability >= 0.0f && cfg.min_probability <= 1.0f))
    throw Error("suffix proposer: min_probability must be in [0, 1]");
  return std::make_unique<SuffixProposer>(cfg);
}

}  // namespace gale
