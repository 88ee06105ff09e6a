// An index of n-grams over a stream of token segments, for the model-free proposers
// (token_proposer.h): for each of a few n-gram lengths, the latest position where each n-gram
// was followed by a token, and a chain to the previous one. Both proposers ask "where did the
// context's last n tokens occur before, and what came next": a lookup here instead of a scan of
// the whole context per call.
//
// Positions are global and only grow (int64): a segment is one request's tokens, appended one at
// a time; n-grams never cross segments. The last segment may be truncated (a rollback) and the
// first one dropped (eviction); both undo the index exactly, so a lookup after them answers as
// if the removed tokens had never been appended.
//
// An n-gram "ends at e" when it covers [e - n, e); it is indexed once the token at e exists in
// its segment, since an occurrence with nothing after it proposes nothing.
// Knows token ids only (opaque int32 values, any sign); device-free; not thread-safe.
#pragma once
#include <cstdint>
#include <deque>
#include <span>
#include <utility>
#include <vector>

namespace gale {

class NgramIndex {
 public:
  // lengths: the n-gram lengths indexed, each >= 1, any order. The store holds fewer than 2^31
  // tokens, dropped ones included until compacted (at most twice the live ones).
  explicit NgramIndex(std::vector<int64_t> lengths);

  int64_t begin() const { return base_ + int64_t(front_); }  // first live position
  int64_t end() const { return base_ + int64_t(tokens_.size()); }  // one past the last token
  int64_t size() const { return end() - begin(); }
  int32_t at(int64_t pos) const { return tokens_[size_t(pos - base_)]; }
  // The live tokens, [begin(), end()).
  std::span<const int32_t> tokens() const { return std::span<const int32_t>(tokens_).subspan(front_); }
  std::span<const int64_t> lengths() const { return lengths_; }

  // Starts a new segment at end(): later n-grams begin at or after it.
  void start_segment();
  void append(int32_t token);
  void append(std::span<const int32_t> tokens) {
    for (int32_t t : tokens) append(t);
  }
  // Cuts the last segment back to end at `new_end` (>= its first position).
  void truncate(int64_t new_end);
  // For an index of one segment (a live request's context): makes it equal to `context`,
  // keeping the common prefix, truncating the rest and appending the new tail. Every token is
  // compared: the caller may have grown, shrunk, or shrunk and regrown the context since.
  void sync(std::span<const int32_t> context);
  // Drops the first (oldest) segment and its tokens; dropping the only one empties the index.
  void drop_first_segment();

  // The latest end of an earlier occurrence of `gram` (length lengths()[which]) that a token
  // follows; -1 when there is none.
  int64_t latest(size_t which, std::span<const int32_t> gram) const;
  // The occurrence before the one ending at `e` (same n-gram, same length); -1 when none is left.
  int64_t previous(size_t which, int64_t e) const;
  // The segment holding position pos: {its first position, one past its last}.
  std::pair<int64_t, int64_t> segment_bounds(int64_t pos) const;

 private:
  // Open addressing keyed by the n-gram's tokens (compared in the stream, so no false match),
  // value the latest end; backward-shift deletion keeps probes short without tombstones.
  // Ends here and in prev_ are offsets into tokens_ (int32: 8 bytes a slot, 4 a chain link, half
  // of what global positions cost; a full suffix cache of 1M tokens measured 235 MB before),
  // shifted when compact() moves the store.
  struct Slot {
    uint32_t hash = 0;
    int32_t end = -1;  // offset into tokens_; -1: empty
  };
  struct Table {
    std::vector<Slot> slots;
    int64_t used = 0;
  };
  static uint32_t hash_back(std::span<const int32_t> gram);
  bool same_gram(int32_t end, std::span<const int32_t> gram) const;
  // The slot of gram in t, or the empty slot where it would go.
  size_t find_slot(const Table& t, uint32_t hash, std::span<const int32_t> gram) const;
  void grow(Table& t);
  void erase_slot(Table& t, size_t i);
  void index_end(int64_t e);    // adds the n-grams ending at e (the token at e just arrived)
  // Removes them again where e is the latest occurrence: the chain's previous end becomes the
  // latest if it is at or after live_from, else the n-gram leaves the table.
  void unindex_end(int64_t e, int64_t live_from);
  size_t segment_of(int64_t pos) const;
  void compact();

  std::vector<int64_t> lengths_;
  int64_t max_length_ = 0;
  std::vector<Table> tables_;                // per length
  std::vector<std::vector<int32_t>> prev_;   // per length, per offset: offset of the previous end, -1 none
  std::vector<int32_t> tokens_;              // positions [base_, base_ + size)
  size_t front_ = 0;                         // tokens_[0, front_) were dropped, not yet compacted
  int64_t base_ = 0;
  std::deque<int64_t> segments_;             // first position of each live segment
};

}  // namespace gale
