// Internal pipeline of the tokenizer.json tokenizer, stage by stage as HF `tokenizers` runs it:
//   added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> model
//   -> post-processor;  decode: ids -> token strings -> decoder chain -> text.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tokenizer/json_scan.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"

namespace gale::tok {

using json = nlohmann::json;

// Transparent hashing so maps keyed by std::string accept std::string_view look-ups.
struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StrMap = std::unordered_map<std::string, V, StrHash, std::equal_to<>>;

// A piece of the input on its way through pre-tokenization. Pieces holding an added token
// (id >= 0) are final and skipped by later stages.
struct Piece {
  std::string text;
  int32_t id = -1;
  bool at_origin = false;  // starts at offset 0 of the original input (Metaspace prepend "first")
};

// ---- patterns shared by Split pre-tokenizers, Replace normalizers and decoders ----
// HF's Pattern: a literal string or a regex; find_matches covers the whole input with
// (start, end, is_match) spans.
struct Span {
  size_t start, end;
  bool match;
};
class Pattern {
 public:
  static Pattern from_json(const json& j);  // {"String": s} or {"Regex": r}
  void find_matches(std::string_view s, std::vector<Span>& out) const;
  std::string replace_all(std::string_view s, std::string_view content) const;

 private:
  std::string literal_;
  std::shared_ptr<Regex> regex_;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior split_behavior_from_json(const json& j);
// Splits `p` at `spans` according to `behavior`, appending the non-empty parts to out.
void split_piece(const Piece& p, const std::vector<Span>& spans, SplitBehavior behavior, std::vector<Piece>& out);

// ---- stages ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);  // null json -> nullptr

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Rewrites `pieces` in place; pieces with id >= 0 must be passed through untouched.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const json& j);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // True when the text of a token can still change with the tokens that follow it, beyond
  // trailing incomplete UTF-8 (ByteFallback groups consecutive <0xNN> tokens).
  virtual bool groups_byte_tokens() const { return false; }
  // True for ByteLevel (alone or in a Sequence): token strings are bytes through GPT-2's map.
  virtual bool byte_level() const { return false; }
};
std::unique_ptr<Decoder> make_decoder(const json& j);

// String -> id by open addressing. The BPE vocab is looked up three times per merge at load
// (0.8M look-ups for Llama-3.1) and per symbol at encode, so a look-up touches two cache lines:
// its slot (hash tag + offset) and its key, stored in one buffer as [u32 length][i32 id][bytes].
class TokenIndex {
 public:
  static uint64_t hash(std::string_view s);
  void reserve(size_t n, size_t key_bytes = 0);  // n keys of key_bytes in all
  // A repeated key takes the later id (JSON's last key wins). h = hash(key).
  void assign(std::string_view key, int32_t id) { assign(key, id, hash(key)); }
  void assign(std::string_view key, int32_t id, uint64_t h);
  int32_t find(std::string_view key) const { return find(key, hash(key)); }
  int32_t find(std::string_view key, uint64_t h) const;  // h = hash(key); -1 when absent
  // Hints for a find with hash h coming soon: the slot, then (once the slot is cached) the key.
  void prefetch_slot(uint64_t h) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[size_t(h) & (slots_.size() - 1)]);
  }
  void prefetch_key(uint64_t h) const {
    if (slots_.empty()) return;
    uint64_t v = slots_[size_t(h) & (slots_.size() - 1)];
    if (v != 0) __builtin_prefetch(data_.data() + uint32_t(v) - 1);
  }
  size_t size() const { return n_; }
  // f(key, id, offset) for every distinct key, in the order the keys first came.
  template <class F>
  void for_each(F&& f) const {
    for (size_t off = 0; off < data_.size();) {
      Header h = header(off);
      f(key_at(off), h.id, uint32_t(off));
      off += sizeof(Header) + h.len;
    }
  }
  std::string_view key_at(uint32_t offset) const {
    return std::string_view(data_.data() + offset + sizeof(Header), header(offset).len);
  }

 private:
  struct Header {
    uint32_t len;
    int32_t id;
  };
  Header header(size_t off) const {
    Header h;
    std::memcpy(&h, data_.data() + off, sizeof(h));
    return h;
  }
  size_t probe(std::string_view key, uint64_t h) const;  // slot holding key, or the empty slot for it
  std::string data_;
  std::vector<uint64_t> slots_;  // (hash high 32 bits) << 32 | (offset of the key in data_ + 1); 0 = empty
  size_t n_ = 0;
};

// (left id, right id) -> (rank, merged id), open addressing; the first of repeated merges wins.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;
    int32_t rank, new_id;
  };
  void reserve(size_t n);
  void insert(uint64_t key, int32_t rank, int32_t new_id);
  const Entry* find(uint64_t key) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  void prefetch(uint64_t key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[slot(key)]);
  }
  bool empty() const { return n_ == 0; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are >= 0, so no real key is all ones
  // Fibonacci hashing: the top bits of the product depend on every bit of both ids.
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<Entry> slots_;
  size_t mask_ = 0, n_ = 0;
  int shift_ = 64;
};

// The BPE model: vocab, merges and the merge loop, with a per-word cache.
class BpeModel {
 public:
  // raw: the vocab / merges text found by split_bpe_sections (j then holds null for them).
  explicit BpeModel(const json& j, const BpeSections* raw = nullptr);
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  int32_t find(std::string_view token) const { return vocab_.find(token); }  // -1 when absent
  size_t vocab_count() const { return vocab_.size(); }
  int32_t max_id() const { return max_id_; }
  std::optional<std::string_view> id_to_token(int32_t id) const;  // nullopt for a hole in the ids
  bool byte_fallback() const { return byte_fallback_; }

 private:
  void tokenize_piece(std::string_view word, std::vector<int32_t>& out) const;  // through the cache
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  int32_t byte_token(unsigned char b) const { return byte_ids_[b]; }

  void read_vocab(const json& j, std::string_view raw);
  void read_merges(const json& j, std::string_view raw);

  TokenIndex vocab_;
  std::vector<uint32_t> vocab_r_;  // id -> offset of its key in vocab_ + 1; 0 = hole
  int32_t max_id_ = -1;
  MergeTable merges_;
  std::string unk_token_;
  int32_t unk_id_ = -1;
  std::string prefix_, suffix_;  // continuing_subword_prefix, end_of_word_suffix
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  bool split_at_metaspace_ = false;  // words may be cut before each run of U+2581 (see the constructor)
  int32_t byte_ids_[256];
  // Word -> ids cache (HF keeps one too); cleared when it grows past its cap.
  mutable std::mutex cache_mu_;
  mutable StrMap<std::vector<int32_t>> cache_;
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
};

// Added/special tokens, matched leftmost-longest before pre-tokenization.
class AddedVocabulary {
 public:
  void init(std::vector<AddedToken> tokens, const Normalizer* normalizer);
  // Stage 1 (raw text) and stage 2 (normalized text) splitting of HF's extract_and_normalize.
  void extract_and_normalize(std::string_view text, const Normalizer* normalizer, std::vector<Piece>& out) const;
  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view s) const;
  // The string decode() uses for an added token: HF stores normalized tokens normalized.
  const std::string& decode_form(const AddedToken& t) const {
    size_t k = size_t(&t - tokens_.data());
    return t.normalized ? norm_patterns_[k] : t.content;
  }
  bool is_special_content(std::string_view s) const { return special_contents_.count(s) != 0; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Matcher {
    std::vector<int> by_first_byte[256];  // token indices, longest content first
    bool empty = true;
  };
  void build(Matcher& m, const std::vector<std::string>& patterns);
  void split(const Piece& p, const Matcher& m, const std::vector<std::string>& patterns, std::vector<Piece>& out) const;

  std::vector<AddedToken> tokens_;
  std::vector<std::string> raw_patterns_, norm_patterns_;  // per token; empty when in the other set
  Matcher raw_, norm_;
  std::unordered_map<int32_t, size_t> by_id_;
  StrMap<size_t> by_content_;
  std::unordered_set<std::string, StrHash, std::equal_to<>> special_contents_;
};

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const json& tokenizer_json, const json* config, const BpeSections* raw = nullptr);
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  size_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  bool is_special(int32_t id) const override;
  bool stream_holds(int32_t id) const override;
  std::string token_bytes(int32_t id) const override;

 private:
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
  size_t vocab_size_ = 0;
};

// Reads a string/number/bool field with a clear error on a wrong type.
const json& field(const json& j, const char* key);
std::string get_string(const json& j, const char* key, const char* def = nullptr);  // def null: required
bool get_bool(const json& j, const char* key, bool def);

}  // namespace gale::tok
