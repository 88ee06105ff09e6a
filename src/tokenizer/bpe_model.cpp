// The BPE model: vocab + ranked merges. Each pre-tokenized word is split into characters (or
// <0xNN> byte tokens / unk), then merged lowest-rank-first with a priority queue over adjacent
// pairs, as HF's Word::merge_all does; results are cached per word.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <queue>

#include "core/error.h"
#include "tokenizer/json_scan.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

namespace {
constexpr size_t kCacheCap = 1 << 16;      // entries before the cache is dropped
constexpr size_t kCacheMaxWord = 256;       // longer words are not cached
inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's space
}  // namespace

namespace {

// Vocab entries are inserted, and merges resolved, a batch at a time: all hashes of a batch first,
// with prefetches, so that the cache misses of the look-ups (~3 per merge, 1 merge-table insert)
// overlap instead of following one another (they dominated the load time).
constexpr size_t kBatch = 32;

struct PendingMerge {
  std::string text;  // a, b, then (when b starts with the continuing-subword prefix) a + b less it
  uint32_t len_a = 0, len_b = 0;
  uint64_t h_a = 0, h_b = 0, h_m = 0;
  int32_t id_m = -1;
  uint64_t key = 0;
  std::string_view a() const { return std::string_view(text).substr(0, len_a); }
  std::string_view b() const { return std::string_view(text).substr(len_a, len_b); }
  std::string_view merged() const {
    return text.size() == len_a + len_b ? std::string_view(text) : std::string_view(text).substr(len_a + len_b);
  }
};

}  // namespace

// model.vocab from the fast scanner or, when it declines, from nlohmann. Either way the first
// entry (in file order) whose id is out of range is the error.
void BpeModel::read_vocab(const json& j, std::string_view raw) {
  if (!raw.empty()) {
    // Straight into the index, a batch at a time (each slot prefetched when its entry is
    // scanned). The range limit depends on the entry count, so ids that may pass it are kept
    // aside and checked at the end (ids in order never are).
    vocab_.reserve(size_t(std::count(raw.begin(), raw.end(), ':')), raw.size());  // >= the entries and their bytes
    size_t count = 0;
    std::vector<int64_t> suspects;
    struct Pending {
      std::string token;
      int32_t id;
      uint64_t hash;
    };
    std::vector<Pending> batch(kBatch);
    size_t n = 0;
    auto flush = [&] {
      for (size_t k = 0; k < n; ++k) vocab_.assign(batch[k].token, batch[k].id, batch[k].hash);
      n = 0;
    };
    bool ok = scan_vocab(raw, [&](std::string_view tok, int64_t id) {
      if (size_t(id) >= 2 * count + 1024) suspects.push_back(id);
      ++count;
      Pending& e = batch[n++];
      e.token.assign(tok);
      e.id = int32_t(std::min<int64_t>(id, INT32_MAX));
      e.hash = TokenIndex::hash(tok);
      vocab_.prefetch_slot(e.hash);
      max_id_ = std::max(max_id_, e.id);
      if (n == kBatch) flush();
    });
    flush();
    if (ok) {
      for (int64_t id : suspects)
        if (size_t(id) >= 2 * count + 1024) throw Error("model.vocab: id " + std::to_string(id) + " out of range");
      return;
    }
    vocab_ = TokenIndex();
    max_id_ = -1;
  }
  json parsed;
  if (!raw.empty()) parsed = json::parse(raw);
  const json& vocab = raw.empty() ? field(j, "vocab") : parsed;
  if (!vocab.is_object()) throw Error("model.vocab must be an object");
  std::vector<std::pair<std::string, int64_t>> entries;
  entries.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw Error("model.vocab: id of '" + it.key() + "' is not an integer");
    entries.emplace_back(it.key(), it.value().get<int64_t>());
  }
  vocab_.reserve(entries.size());
  size_t limit = 2 * entries.size() + 1024;
  for (const auto& [tok, id] : entries) {
    if (id < 0 || size_t(id) >= limit) throw Error("model.vocab: id " + std::to_string(id) + " out of range");
    vocab_.assign(tok, int32_t(id));
    max_id_ = std::max(max_id_, int32_t(id));  // over every entry, a repeated key's earlier id too
  }
}

// model.merges, likewise; resolved to (left id, right id) -> (rank, merged id).
void BpeModel::read_merges(const json& j, std::string_view raw) {
  std::vector<PendingMerge> batch(kBatch);
  size_t n = 0;
  int32_t rank = 0;
  std::string error;  // the first merge that fails, thrown once the whole section is known good

  auto flush = [&] {
    for (size_t k = 0; k < n; ++k) {
      vocab_.prefetch_key(batch[k].h_a);
      vocab_.prefetch_key(batch[k].h_b);
      vocab_.prefetch_key(batch[k].h_m);
    }
    for (size_t k = 0; k < n; ++k) {
      PendingMerge& m = batch[k];
      int32_t ia = vocab_.find(m.a(), m.h_a), ib = vocab_.find(m.b(), m.h_b);
      if (ia < 0 || ib < 0) {
        error = "model.merges: '" + std::string(m.a()) + " " + std::string(m.b()) + "' uses a token missing from the vocab";
        n = 0;
        return;
      }
      m.id_m = vocab_.find(m.merged(), m.h_m);
      if (m.id_m < 0) {
        error = "model.merges: merged token '" + std::string(m.merged()) + "' missing from the vocab";
        n = 0;
        return;
      }
      m.key = pair_key(ia, ib);
      merges_.prefetch(m.key);
    }
    for (size_t k = 0; k < n; ++k) merges_.insert(batch[k].key, rank++, batch[k].id_m);
    n = 0;
  };
  auto add = [&](std::string_view a, std::string_view b) {
    if (!error.empty()) return;
    PendingMerge& m = batch[n++];
    m.text.assign(a);
    m.text.append(b);
    m.len_a = uint32_t(a.size());
    m.len_b = uint32_t(b.size());
    if (!prefix_.empty() && b.starts_with(prefix_)) {
      m.text.append(a);
      m.text.append(b.substr(prefix_.size()));
    }
    m.h_a = TokenIndex::hash(m.a());
    m.h_b = TokenIndex::hash(m.b());
    m.h_m = TokenIndex::hash(m.merged());
    vocab_.prefetch_slot(m.h_a);
    vocab_.prefetch_slot(m.h_b);
    vocab_.prefetch_slot(m.h_m);
    if (n == kBatch) flush();
  };
  auto finish = [&] {
    flush();
    if (!error.empty()) throw Error(error);
  };

  if (!raw.empty()) {
    // Entries: one per string in the "a b" form, one per two in the [a, b] form.
    size_t quotes = size_t(std::count(raw.begin(), raw.end(), '"'));
    size_t first = raw.find_first_not_of(" \t\r\n", raw.find('[') + 1);
    merges_.reserve(first < raw.size() && raw[first] == '[' ? quotes / 4 : quotes / 2);
    if (scan_merges(raw, add)) return finish();
    merges_ = MergeTable();
    n = 0;
    rank = 0;
    error.clear();
  }
  // Fall-back: every entry is checked for its form before any is resolved.
  json parsed;
  if (!raw.empty()) parsed = json::parse(raw);
  const json& merges = raw.empty() ? field(j, "merges") : parsed;
  if (!merges.is_array()) throw Error("model.merges must be a list");
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (const json& m : merges) {
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) throw Error("model.merges: '" + s + "' is not of the form 'a b'");
      pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      pairs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw Error("model.merges: entry " + std::to_string(pairs.size()) + " is neither \"a b\" nor [a, b]");
    }
  }
  merges_.reserve(pairs.size());
  for (const auto& [a, b] : pairs) add(a, b);
  finish();
}

BpeModel::BpeModel(const json& j, const BpeSections* raw) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  read_vocab(j, raw ? raw->vocab : std::string_view());
  vocab_r_.assign(size_t(max_id_ + 1), 0);
  vocab_.for_each([&](std::string_view, int32_t id, uint32_t offset) { vocab_r_[size_t(id)] = offset + 1; });

  if (j.contains("unk_token") && !j["unk_token"].is_null()) {
    unk_token_ = get_string(j, "unk_token");
    unk_id_ = vocab_.find(unk_token_);
  }
  if (j.contains("continuing_subword_prefix") && !j["continuing_subword_prefix"].is_null())
    prefix_ = get_string(j, "continuing_subword_prefix");
  if (j.contains("end_of_word_suffix") && !j["end_of_word_suffix"].is_null())
    suffix_ = get_string(j, "end_of_word_suffix");
  fuse_unk_ = get_bool(j, "fuse_unk", false);
  byte_fallback_ = get_bool(j, "byte_fallback", false);
  ignore_merges_ = get_bool(j, "ignore_merges", false);
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(std::string_view(name));
    }
  }

  read_merges(j, raw ? raw->merges : std::string_view());

  // SentencePiece-style vocabularies (Llama-2) have no pre-tokenizer, so a whole document is one
  // word: no cache hit and a merge queue over thousands of symbols. Cutting the word before each
  // run of U+2581 changes nothing when no token holds U+2581 right after another character: a
  // pair across the cut would merge into such a token, so it never merges, and the pieces' merges
  // are the same whichever piece goes first. The cut must also not change the initial symbols:
  // U+2581 is a token of its own (so no byte fallback or unk at the cut), the unk token holds no
  // U+2581, and no prefix / suffix marks the first / last character of a word.
  split_at_metaspace_ = prefix_.empty() && suffix_.empty() && !ignore_merges_ && vocab_.find(kMetaspace) >= 0 &&
                        unk_token_.find(kMetaspace) == std::string::npos;
  if (split_at_metaspace_) {
    vocab_.for_each([&](std::string_view token, int32_t, uint32_t) {
      for (size_t i = token.find(kMetaspace, 1); split_at_metaspace_ && i != std::string_view::npos;
           i = token.find(kMetaspace, i + 3))
        if (i < 3 || token.compare(i - 3, 3, kMetaspace) != 0) split_at_metaspace_ = false;
    });
  }
}

std::optional<std::string_view> BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_r_.size() || vocab_r_[size_t(id)] == 0) return std::nullopt;
  return vocab_.key_at(vocab_r_[size_t(id)] - 1);
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (int32_t id = vocab_.find(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (!split_at_metaspace_) return tokenize_piece(word, out);
  // Pieces start at each run of U+2581 (see split_at_metaspace_): "a▁▁b▁c" is "a", "▁▁b", "▁c".
  size_t start = 0;
  for (size_t i = word.find(kMetaspace, 1); i != std::string_view::npos; i = word.find(kMetaspace, i + 3)) {
    if (i >= 3 && word.compare(i - 3, 3, kMetaspace) == 0) continue;  // inside a run
    tokenize_piece(word.substr(start, i - start), out);
    start = i;
  }
  tokenize_piece(word.substr(start), out);
}

void BpeModel::tokenize_piece(std::string_view word, std::vector<int32_t>& out) const {
  bool cacheable = word.size() <= kCacheMaxWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::vector<int32_t> ids(out.begin() + long(first), out.end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheCap) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  thread_local std::vector<Symbol> sym;
  sym.clear();
  auto add = [&](int32_t id) {
    int32_t n = int32_t(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  };
  // Initial symbols: characters, else their <0xNN> bytes, else unk (fused when fuse_unk).
  int32_t pending_unk = -1;  // unk waiting to be pushed (fuse_unk merges consecutive ones)
  std::string buf;
  size_t i = 0;
  while (i < w.size()) {
    size_t start = i;
    utf8_next(w, i);
    std::string_view ch = w.substr(start, i - start);
    bool is_first = start == 0, is_last = i == w.size();
    std::string_view key = ch;
    if ((!is_first && !prefix_.empty()) || (is_last && !suffix_.empty())) {
      buf.clear();
      if (!is_first) buf += prefix_;
      buf += ch;
      if (is_last) buf += suffix_;
      key = buf;
    }
    if (int32_t id = vocab_.find(key); id >= 0) {
      if (pending_unk >= 0) {
        add(pending_unk);
        pending_unk = -1;
      }
      add(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : key) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF pushes the bytes without flushing a pending unk first; keep that order.
        for (char c : key) add(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (!unk_token_.empty()) {
      if (unk_id_ < 0) throw Error("unk token '" + unk_token_ + "' is not in the vocab");
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);
  if (sym.empty()) return;
  sym.back().next = -1;

  if (sym.size() > 1 && !merges_.empty()) {
    struct Cand {
      int32_t rank, pos, new_id;
      bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    thread_local std::vector<Cand> heap;
    heap.clear();
    auto push = [&](int32_t pos) {
      const Symbol& a = sym[size_t(pos)];
      if (a.next < 0) return;
      const MergeTable::Entry* m = merges_.find(pair_key(a.id, sym[size_t(a.next)].id));
      if (!m) return;
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end());
    };
    for (int32_t p = 0; p + 1 < int32_t(sym.size()); ++p) push(p);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      Cand top = heap.back();
      heap.pop_back();
      Symbol& a = sym[size_t(top.pos)];
      if (!a.alive || a.next < 0) continue;
      Symbol& b = sym[size_t(a.next)];
      const MergeTable::Entry* m = merges_.find(pair_key(a.id, b.id));
      if (!m || m->new_id != top.new_id) continue;  // stale entry
      a.id = top.new_id;
      b.alive = false;
      a.next = b.next;
      if (a.next >= 0) sym[size_t(a.next)].prev = top.pos;
      if (a.prev >= 0) push(a.prev);
      push(top.pos);
    }
  }
  for (const Symbol& s : sym)
    if (s.alive) out.push_back(s.id);
}

// ---- TokenIndex / MergeTable ----

namespace {
// Byte equality without a call for the short keys that are most of a vocab.
inline bool same_bytes(const char* a, const char* b, size_t n) {
  if (n > 8) return std::memcmp(a, b, n) == 0;
  if (n >= 4) {
    uint32_t a0, a1, b0, b1;
    std::memcpy(&a0, a, 4);
    std::memcpy(&a1, a + n - 4, 4);
    std::memcpy(&b0, b, 4);
    std::memcpy(&b1, b + n - 4, 4);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
  }
  return n == 0 || (a[0] == b[0] && a[n >> 1] == b[n >> 1] && a[n - 1] == b[n - 1]);
}
}  // namespace

// Word at a time (tokens are short: one or two words); the final mix spreads every input bit
// over the low bits (the slot) and the high 32 (the tag).
uint64_t TokenIndex::hash(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = 0x9E3779B97F4A7C15ull * (n + 1);
  for (; n > 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  uint64_t w = 0;  // the last 1-8 bytes, every one of them
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    w = lo | (uint64_t(hi) << 32);
  } else if (n > 0) {
    auto byte = [&](size_t k) { return uint64_t(static_cast<unsigned char>(p[k])); };
    w = (byte(0) << 16) | (byte(n >> 1) << 8) | byte(n - 1);
  }
  h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  h *= 0x94D049BB133111EBull;
  return h ^ (h >> 29);
}

void TokenIndex::reserve(size_t n, size_t key_bytes) {
  data_.reserve(n * sizeof(Header) + key_bytes);
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap <= slots_.size()) return;
  slots_.assign(cap, 0);
  for_each([&](std::string_view key, int32_t, uint32_t offset) {
    uint64_t h = hash(key);
    slots_[probe(key, h)] = (h & 0xFFFFFFFF00000000ull) | uint64_t(offset + 1);
  });
}

size_t TokenIndex::probe(std::string_view key, uint64_t h) const {
  const size_t mask = slots_.size() - 1;
  const uint64_t tag = h & 0xFFFFFFFF00000000ull;
  for (size_t i = size_t(h) & mask;; i = (i + 1) & mask) {
    uint64_t v = slots_[i];
    if (v == 0) return i;
    if ((v & 0xFFFFFFFF00000000ull) == tag) {
      size_t off = uint32_t(v) - 1;
      if (header(off).len == key.size() && same_bytes(data_.data() + off + sizeof(Header), key.data(), key.size()))
        return i;
    }
  }
}

void TokenIndex::assign(std::string_view key, int32_t id, uint64_t h) {
  if (2 * (n_ + 1) > slots_.size()) reserve(2 * n_ + 8);
  size_t i = probe(key, h);
  if (slots_[i] != 0) {
    std::memcpy(data_.data() + (uint32_t(slots_[i]) - 1) + offsetof(Header, id), &id, sizeof(id));
    return;
  }
  if (data_.size() + sizeof(Header) + key.size() >= 0xFFFFFFFFull) throw Error("vocab too large (over 4 GB of tokens)");
  const Header header{uint32_t(key.size()), id};
  const auto offset = uint32_t(data_.size());
  data_.append(reinterpret_cast<const char*>(&header), sizeof(header));
  data_.append(key);
  slots_[i] = (h & 0xFFFFFFFF00000000ull) | uint64_t(offset + 1);
  ++n_;
}

int32_t TokenIndex::find(std::string_view key, uint64_t h) const {
  if (slots_.empty()) return -1;
  uint64_t v = slots_[probe(key, h)];
  return v == 0 ? -1 : header(uint32_t(v) - 1).id;
}

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  int bits = 4;
  while (2 * cap < 3 * n) cap <<= 1, ++bits;  // load <= 2/3: 8 MB instead of 16 for Llama-3.1's 280k
  if (cap <= slots_.size()) return;
  std::vector<Entry> old = std::move(slots_);
  slots_.assign(cap, Entry{kEmpty, 0, 0});
  mask_ = cap - 1;
  shift_ = 64 - bits;
  n_ = 0;
  for (const Entry& e : old)
    if (e.key != kEmpty) insert(e.key, e.rank, e.new_id);
}

void MergeTable::insert(uint64_t key, int32_t rank, int32_t new_id) {
  if (3 * (n_ + 1) > 2 * slots_.size()) reserve(2 * n_ + 8);
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    Entry& e = slots_[i];
    if (e.key == key) return;  // repeated merge: the first (lowest rank) stays
    if (e.key == kEmpty) {
      e = Entry{key, rank, new_id};
      ++n_;
      return;
    }
  }
}


}  // namespace gale::tok
