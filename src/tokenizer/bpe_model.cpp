// The BPE model: vocab + ranked merges. Each pre-tokenized word is split into characters (or
// <0xNN> byte tokens / unk), then merged lowest-rank-first with a priority queue over adjacent
// pairs, as HF's Word::merge_all does; results are cached per word.
#include <algorithm>
#include <cstdio>
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
}  // namespace

namespace {

// model.vocab as (token, id) pairs, from the fast scanner or, when it declines, from nlohmann.
void read_vocab(const json& j, std::string_view raw, std::vector<std::pair<std::string, int64_t>>& out) {
  if (!raw.empty() && scan_vocab(raw, out)) return;
  json parsed;
  if (!raw.empty()) parsed = json::parse(raw);
  const json& vocab = raw.empty() ? field(j, "vocab") : parsed;
  if (!vocab.is_object()) throw Error("model.vocab must be an object");
  out.clear();
  out.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw Error("model.vocab: id of '" + it.key() + "' is not an integer");
    out.emplace_back(it.key(), it.value().get<int64_t>());
  }
}

// model.merges as (a, b) pairs, likewise.
void read_merges(const json& j, std::string_view raw, std::vector<std::pair<std::string, std::string>>& out) {
  if (!raw.empty() && scan_merges(raw, out)) return;
  json parsed;
  if (!raw.empty()) parsed = json::parse(raw);
  const json& merges = raw.empty() ? field(j, "merges") : parsed;
  if (!merges.is_array()) throw Error("model.merges must be a list");
  out.clear();
  out.reserve(merges.size());
  for (const json& m : merges) {
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) throw Error("model.merges: '" + s + "' is not of the form 'a b'");
      out.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw Error("model.merges: entry " + std::to_string(out.size()) + " is neither \"a b\" nor [a, b]");
    }
  }
}

}  // namespace

BpeModel::BpeModel(const json& j, const BpeSections* raw) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  std::vector<std::pair<std::string, int64_t>> vocab;
  read_vocab(j, raw ? raw->vocab : std::string_view(), vocab);
  vocab_.reserve(vocab.size());
  size_t limit = 2 * vocab.size() + 1024;
  for (auto& [tok, id] : vocab) {
    if (id < 0 || size_t(id) >= limit) throw Error("model.vocab: id " + std::to_string(id) + " out of range");
    vocab_.assign(std::move(tok), int32_t(id));
    max_id_ = std::max(max_id_, int32_t(id));
  }
  vocab.clear();
  vocab.shrink_to_fit();
  vocab_r_.assign(size_t(max_id_ + 1), nullptr);
  for (size_t k = 0; k < vocab_.size(); ++k) vocab_r_[size_t(vocab_.ids()[k])] = &vocab_.keys()[k];

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

  std::vector<std::pair<std::string, std::string>> merges;
  read_merges(j, raw ? raw->merges : std::string_view(), merges);
  merges_.reserve(merges.size());
  int32_t rank = 0;
  std::string merged;
  for (const auto& [a, b] : merges) {
    int32_t ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia < 0 || ib < 0)
      throw Error("model.merges: '" + a + " " + b + "' uses a token missing from the vocab");
    merged.assign(a);
    if (prefix_.empty() || b.compare(0, prefix_.size(), prefix_) != 0) merged += b;
    else merged.append(b, prefix_.size());
    int32_t im = vocab_.find(merged);
    if (im < 0) throw Error("model.merges: merged token '" + merged + "' missing from the vocab");
    merges_.insert(pair_key(ia, ib), rank, im);
    ++rank;
  }
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_r_.size()) return nullptr;
  return vocab_r_[size_t(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (int32_t id = vocab_.find(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
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
// FNV-1a with a final mix: tokens are short, so a byte loop beats a block hash here.
inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h ^ (h >> 31);
}
}  // namespace

void TokenIndex::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap <= slots_.size()) return;
  slots_.assign(cap, 0);
  for (size_t k = 0; k < keys_.size(); ++k) {
    uint64_t h = hash_bytes(keys_[k]);
    slots_[probe(keys_[k], h)] = (h & 0xFFFFFFFF00000000ull) | uint64_t(k + 1);
  }
  keys_.reserve(n);
  ids_.reserve(n);
}

size_t TokenIndex::probe(std::string_view key, uint64_t h) const {
  const size_t mask = slots_.size() - 1;
  const uint64_t tag = h & 0xFFFFFFFF00000000ull;
  for (size_t i = size_t(h) & mask;; i = (i + 1) & mask) {
    uint64_t v = slots_[i];
    if (v == 0) return i;
    if ((v & 0xFFFFFFFF00000000ull) == tag && keys_[size_t(uint32_t(v)) - 1] == key) return i;
  }
}

void TokenIndex::assign(std::string key, int32_t id) {
  if (2 * (keys_.size() + 1) > slots_.size()) reserve(2 * keys_.size() + 8);
  uint64_t h = hash_bytes(key);
  size_t i = probe(key, h);
  if (slots_[i] != 0) {
    ids_[size_t(uint32_t(slots_[i])) - 1] = id;
    return;
  }
  keys_.push_back(std::move(key));
  ids_.push_back(id);
  slots_[i] = (h & 0xFFFFFFFF00000000ull) | uint64_t(keys_.size());
}

int32_t TokenIndex::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  uint64_t v = slots_[probe(key, hash_bytes(key))];
  return v == 0 ? -1 : ids_[size_t(uint32_t(v)) - 1];
}

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  int bits = 4;
  while (cap < 2 * n) cap <<= 1, ++bits;
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
  if (2 * (n_ + 1) > slots_.size()) reserve(2 * n_ + 8);
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
