// The BPE model: vocab + ranked merges. Each pre-tokenized word is split into characters (or
// <0xNN> byte tokens / unk), then merged lowest-rank-first with a priority queue over adjacent
// pairs, as HF's Word::merge_all does; results are cached per word.
#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

namespace {
constexpr size_t kCacheCap = 1 << 16;      // entries before the cache is dropped
constexpr size_t kCacheMaxWord = 256;       // longer words are not cached
inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
}  // namespace

BpeModel::BpeModel(const json& j) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  const json& vocab = field(j, "vocab");
  if (!vocab.is_object()) throw Error("model.vocab must be an object");
  vocab_.reserve(vocab.size());
  size_t limit = 2 * vocab.size() + 1024;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw Error("model.vocab: id of '" + it.key() + "' is not an integer");
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || size_t(id) >= limit) throw Error("model.vocab: id " + std::to_string(id) + " out of range");
    vocab_[it.key()] = int32_t(id);
    max_id_ = std::max(max_id_, int32_t(id));
  }
  vocab_r_.assign(size_t(max_id_ + 1), nullptr);
  for (const auto& [tok, id] : vocab_) vocab_r_[size_t(id)] = &tok;

  if (j.contains("unk_token") && !j["unk_token"].is_null()) {
    unk_token_ = get_string(j, "unk_token");
    auto it = vocab_.find(unk_token_);
    if (it != vocab_.end()) unk_id_ = it->second;
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
      auto it = vocab_.find(std::string_view(name));
      if (it != vocab_.end()) byte_ids_[b] = it->second;
    }
  }

  const json& merges = field(j, "merges");
  if (!merges.is_array()) throw Error("model.merges must be a list");
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const json& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) throw Error("model.merges: '" + s + "' is not of the form 'a b'");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw Error("model.merges: entry " + std::to_string(rank) + " is neither \"a b\" nor [a, b]");
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw Error("model.merges: '" + a + " " + b + "' uses a token missing from the vocab");
    std::string merged = a + (prefix_.empty() || b.compare(0, prefix_.size(), prefix_) != 0 ? b : b.substr(prefix_.size()));
    auto im = vocab_.find(merged);
    if (im == vocab_.end()) throw Error("model.merges: merged token '" + merged + "' missing from the vocab");
    merges_.emplace(pair_key(ia->second, ib->second), MergeInfo{rank, im->second});
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
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
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
    auto it = vocab_.find(key);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) {
        add(pending_unk);
        pending_unk = -1;
      }
      add(it->second);
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
      auto it = merges_.find(pair_key(a.id, sym[size_t(a.next)].id));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, pos, it->second.new_id});
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
      auto it = merges_.find(pair_key(a.id, b.id));
      if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry
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

}  // namespace gale::tok
