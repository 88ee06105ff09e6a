#include "runtime/ngram_index.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace gale {

NgramIndex::NgramIndex(std::vector<int64_t> lengths) : lengths_(std::move(lengths)) {
  GALE_ASSERT(!lengths_.empty());
  for (int64_t n : lengths_) {
    GALE_ASSERT(n >= 1);
    max_length_ = std::max(max_length_, n);
  }
  tables_.resize(lengths_.size());
  for (Table& t : tables_) t.slots.resize(16);
  prev_.resize(lengths_.size());
}

// Read from the last token backwards (any order would do; one fixed order is what matters).
// Token ids are opaque: negative ones hash through their bit pattern like any other.
uint32_t NgramIndex::hash_back(std::span<const int32_t> gram) {
  uint64_t h = 0x243F6A8885A308D3ull ^ gram.size();
  for (size_t i = gram.size(); i-- > 0;) {
    h ^= uint64_t(uint32_t(gram[i]));
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
  }
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  return uint32_t(h);
}

bool NgramIndex::same_gram(int32_t end, std::span<const int32_t> gram) const {
  const int32_t* stored = tokens_.data() + (size_t(end) - gram.size());
  return std::equal(gram.begin(), gram.end(), stored);
}

size_t NgramIndex::find_slot(const Table& t, uint32_t hash, std::span<const int32_t> gram) const {
  const size_t mask = t.slots.size() - 1;
  for (size_t i = size_t(hash) & mask;; i = (i + 1) & mask) {
    const Slot& s = t.slots[i];
    if (s.end < 0 || (s.hash == hash && same_gram(s.end, gram))) return i;
  }
}

void NgramIndex::grow(Table& t) {
  std::vector<Slot> old(t.slots.size() * 2);
  old.swap(t.slots);
  const size_t mask = t.slots.size() - 1;
  for (const Slot& s : old) {
    if (s.end < 0) continue;
    size_t i = size_t(s.hash) & mask;
    while (t.slots[i].end >= 0) i = (i + 1) & mask;
    t.slots[i] = s;
  }
}

// Backward-shift deletion: pull later entries of the probe run into the hole unless that would
// move one before its home slot.
void NgramIndex::erase_slot(Table& t, size_t hole) {
  const size_t mask = t.slots.size() - 1;
  for (size_t j = hole;;) {
    j = (j + 1) & mask;
    if (t.slots[j].end < 0) break;
    const size_t home = size_t(t.slots[j].hash) & mask;
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (!stays) {
      t.slots[hole] = t.slots[j];
      hole = j;
    }
  }
  t.slots[hole] = Slot{};
  --t.used;
}

size_t NgramIndex::segment_of(int64_t pos) const {
  GALE_ASSERT(!segments_.empty() && pos >= segments_.front());
  return size_t(std::upper_bound(segments_.begin(), segments_.end(), pos) - segments_.begin()) - 1;
}

std::pair<int64_t, int64_t> NgramIndex::segment_bounds(int64_t pos) const {
  const size_t s = segment_of(pos);
  return {segments_[s], s + 1 < segments_.size() ? segments_[s + 1] : end()};
}

void NgramIndex::index_end(int64_t e) {
  const int64_t seg_begin = segments_.back();
  for (size_t w = 0; w < lengths_.size(); ++w) {
    const int64_t n = lengths_[w];
    int32_t prev = -1;
    if (e - n >= seg_begin) {
      std::span<const int32_t> gram(tokens_.data() + (e - n - base_), size_t(n));
      const uint32_t h = hash_back(gram);
      Table& t = tables_[w];
      if (size_t(t.used + 1) * 2 > t.slots.size()) grow(t);
      const size_t i = find_slot(t, h, gram);
      if (t.slots[i].end < 0) {
        t.slots[i].hash = h;
        ++t.used;
      } else {
        prev = t.slots[i].end;
      }
      t.slots[i].end = int32_t(e - base_);
    }
    prev_[w].push_back(prev);
  }
}

void NgramIndex::unindex_end(int64_t e, int64_t live_from) {
  const int64_t seg_begin = segment_bounds(e).first;
  for (size_t w = 0; w < lengths_.size(); ++w) {
    const int64_t n = lengths_[w];
    if (e - n < seg_begin) continue;
    std::span<const int32_t> gram(tokens_.data() + (e - n - base_), size_t(n));
    Table& t = tables_[w];
    const size_t i = find_slot(t, hash_back(gram), gram);
    GALE_ASSERT(t.slots[i].end >= 0);
    // A later occurrence stays the latest (dropping the first segment); only the latest is undone.
    if (t.slots[i].end != int32_t(e - base_)) continue;
    const int32_t prev = prev_[w][size_t(e - base_)];
    if (prev >= 0 && base_ + prev >= live_from) t.slots[i].end = prev;
    else erase_slot(t, i);
  }
}

void NgramIndex::start_segment() {
  if (!segments_.empty() && segments_.back() == end()) return;  // the last one is still empty
  segments_.push_back(end());
}

void NgramIndex::append(int32_t token) {
  if (segments_.empty()) segments_.push_back(end());
  const int64_t e = end();
  GALE_ASSERT(tokens_.size() < size_t(INT32_MAX));
  tokens_.push_back(token);
  index_end(e);
}

void NgramIndex::truncate(int64_t new_end) {
  GALE_ASSERT(!segments_.empty() && new_end >= segments_.back() && new_end <= end());
  // Latest first, so each removed end is the head of its n-gram's chain when it goes.
  for (int64_t e = end() - 1; e >= new_end; --e) unindex_end(e, begin());
  const size_t keep = size_t(new_end - base_);
  tokens_.resize(keep);
  for (std::vector<int32_t>& p : prev_) p.resize(keep);
}

void NgramIndex::sync(std::span<const int32_t> context) {
  GALE_ASSERT(segments_.size() <= 1);
  std::span<const int32_t> have = tokens();
  // The common prefix, compared a chunk at a time with memcmp (vectorized; an element loop cost
  // ~20 us per call on 32k tokens), then token by token inside the first chunk that differs.
  const size_t n = std::min(have.size(), context.size());
  constexpr size_t kChunk = 1024;
  size_t common = 0;
  while (common < n) {
    const size_t len = std::min(kChunk, n - common);
    if (std::memcmp(have.data() + common, context.data() + common, len * sizeof(int32_t)) != 0) {
      while (have[common] == context[common]) ++common;
      break;
    }
    common += len;
  }
  if (common < have.size()) truncate(begin() + int64_t(common));
  append(context.subspan(common));
}

void NgramIndex::drop_first_segment() {
  if (segments_.empty()) return;
  const int64_t first = segments_.front();
  const int64_t last = segment_bounds(first).second;
  // Unindex while the tokens are still there; positions before `last` go dead right after, so an
  // n-gram whose latest occurrence is in this segment leaves the table.
  for (int64_t e = first; e < last; ++e) unindex_end(e, last);
  segments_.pop_front();
  front_ = size_t(last - base_);
  compact();
}

// Dropped tokens are erased from the front once they are at least half the store: amortized
// O(1) per token, and the store never holds more than twice the live tokens.
void NgramIndex::compact() {
  if (front_ == 0 || front_ * 2 < tokens_.size()) return;
  const int32_t shift = int32_t(front_);
  tokens_.erase(tokens_.begin(), tokens_.begin() + shift);
  for (std::vector<int32_t>& p : prev_) {
    p.erase(p.begin(), p.begin() + shift);
    for (int32_t& v : p) v = v >= shift ? v - shift : -1;
  }
  // Every slot points at or after front_: a latest end in a dropped segment left its table then.
  for (Table& t : tables_)
    for (Slot& s : t.slots)
      if (s.end >= 0) s.end -= shift;
  base_ += int64_t(front_);
  front_ = 0;
}

int64_t NgramIndex::latest(size_t which, std::span<const int32_t> gram) const {
  GALE_ASSERT(which < lengths_.size() && int64_t(gram.size()) == lengths_[which]);
  const Table& t = tables_[which];
  const int32_t e = t.slots[find_slot(t, hash_back(gram), gram)].end;
  return e < 0 ? -1 : base_ + e;
}

int64_t NgramIndex::previous(size_t which, int64_t e) const {
  const int32_t p = prev_[which][size_t(e - base_)];
  return p >= 0 && base_ + p >= begin() ? base_ + p : -1;
}

}  // namespace gale
