// Added and special tokens: found in the raw text (normalized == false) and then in each
// normalized piece (normalized == true) before pre-tokenization, with lstrip / rstrip /
// single_word handled as HF's AddedVocabulary::find_matches does.
#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

void AddedVocabulary::init(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_ = std::move(tokens);
  raw_patterns_.assign(tokens_.size(), {});
  norm_patterns_.assign(tokens_.size(), {});
  for (size_t k = 0; k < tokens_.size(); ++k) {
    const AddedToken& t = tokens_[k];
    by_id_[t.id] = k;
    by_content_.emplace(t.content, k);
    if (t.special) special_contents_.insert(t.content);
    if (t.normalized) {
      std::string c = t.content;
      if (normalizer) normalizer->normalize(c);
      norm_patterns_[k] = std::move(c);
    } else {
      raw_patterns_[k] = t.content;
    }
  }
  build(raw_, raw_patterns_);
  build(norm_, norm_patterns_);
}

void AddedVocabulary::build(Matcher& m, const std::vector<std::string>& patterns) {
  for (size_t k = 0; k < patterns.size(); ++k) {
    if (patterns[k].empty()) continue;
    m.by_first_byte[static_cast<unsigned char>(patterns[k][0])].push_back(int(k));
    m.empty = false;
  }
  for (auto& v : m.by_first_byte)
    std::stable_sort(v.begin(), v.end(), [&](int a, int b) { return patterns[size_t(a)].size() > patterns[size_t(b)].size(); });
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view s) const {
  auto it = by_content_.find(s);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

namespace {

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t start;
  return is_alphanumeric(utf8_prev(s, s.size(), start));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_alphanumeric(utf8_next(s, i));
}

// Start of the run of whitespace that ends s.
size_t trailing_space_start(std::string_view s) {
  size_t b = s.size();
  while (b > 0) {
    size_t start;
    if (!is_whitespace(utf8_prev(s, b, start))) break;
    b = start;
  }
  return b;
}

// Length of the run of whitespace that starts s.
size_t leading_space_len(std::string_view s) {
  size_t a = 0;
  while (a < s.size()) {
    size_t i = a;
    if (!is_whitespace(utf8_next(s, i))) break;
    a = i;
  }
  return a;
}

}  // namespace

void AddedVocabulary::split(const Piece& p, const Matcher& m, const std::vector<std::string>& patterns,
                            std::vector<Piece>& out) const {
  std::string_view s = p.text;
  auto emit = [&](size_t a, size_t b, int32_t id) {
    if (b <= a) return;
    Piece q;
    q.text = std::string(s.substr(a, b - a));
    q.id = id;
    q.at_origin = p.at_origin && a == 0;
    out.push_back(std::move(q));
  };
  if (m.empty || s.empty()) {
    emit(0, s.size(), -1);
    return;
  }
  size_t start_offset = 0;  // end of the last accepted token
  size_t pos = 0;           // the matcher's own scan position (leftmost-longest, non-overlapping)
  while (pos < s.size()) {
    const auto& cands = m.by_first_byte[static_cast<unsigned char>(s[pos])];
    int hit = -1;
    for (int k : cands) {
      const std::string& pat = patterns[size_t(k)];
      if (s.compare(pos, pat.size(), pat) == 0) {
        hit = k;
        break;
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[size_t(hit)];
    size_t start = pos, stop = pos + patterns[size_t(hit)].size();
    pos = stop;
    if (tok.single_word) {
      bool start_space = start == 0 || !ends_with_word(s.substr(0, start));
      bool stop_space = stop == s.size() || !starts_with_word(s.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) start = std::max(trailing_space_start(s.substr(0, start)), start_offset);
    if (tok.rstrip) stop += leading_space_len(s.substr(stop));
    if (start > start_offset) emit(start_offset, start, -1);
    Piece q;
    q.text = std::string(s.substr(start, stop - start));
    q.id = tok.id;
    q.at_origin = p.at_origin && start == 0;
    out.push_back(std::move(q));
    start_offset = stop;
  }
  if (start_offset < s.size()) emit(start_offset, s.size(), -1);
}

void AddedVocabulary::extract_and_normalize(std::string_view text, const Normalizer* normalizer,
                                            std::vector<Piece>& out) const {
  Piece whole;
  whole.text = std::string(text);
  whole.at_origin = true;
  std::vector<Piece> stage1;
  split(whole, raw_, raw_patterns_, stage1);
  for (Piece& p : stage1) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    if (normalizer) normalizer->normalize(p.text);
    if (p.text.empty()) continue;
    split(p, norm_, norm_patterns_, out);
  }
}

}  // namespace gale::tok
