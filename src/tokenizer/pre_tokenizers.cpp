// Patterns, split behaviours and the pre-tokenizers of tokenizer.json.
#include <algorithm>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

// ---------------------------------------------------------------------------------------------
// Pattern

Pattern Pattern::from_json(const json& j) {
  Pattern p;
  if (j.is_string()) {
    p.literal_ = j.get<std::string>();
  } else if (j.is_object() && j.contains("String")) {
    p.literal_ = get_string(j, "String");
  } else if (j.is_object() && j.contains("Regex")) {
    p.regex_ = std::make_shared<Regex>(get_string(j, "Regex"));
  } else {
    throw Error("pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + j.dump().substr(0, 100));
  }
  return p;
}

void Pattern::find_matches(std::string_view s, std::vector<Span>& out) const {
  if (s.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  auto add = [&](size_t a, size_t b) {
    if (prev != a) out.push_back({prev, a, false});
    out.push_back({a, b, true});
    prev = b;
  };
  if (regex_) {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    m.clear();
    regex_->find_all(s, m);
    for (auto [a, b] : m) add(a, b);
  } else if (!literal_.empty()) {
    size_t pos = 0;
    while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
      add(pos, pos + literal_.size());
      pos += literal_.size();
    }
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
}

std::string Pattern::replace_all(std::string_view s, std::string_view content) const {
  if (!regex_ && (literal_.empty() || s.find(literal_) == std::string_view::npos)) return std::string(s);
  thread_local std::vector<Span> spans;
  spans.clear();
  find_matches(s, spans);
  std::string r;
  r.reserve(s.size());
  for (const Span& sp : spans) {
    if (sp.match) r += content;
    else r.append(s.substr(sp.start, sp.end - sp.start));
  }
  return r;
}

// Matches of a character predicate: each matching character is its own match (HF's
// `impl Pattern for Fn(char) -> bool`).
template <class Pred>
static void find_char_matches(std::string_view s, Pred pred, std::vector<Span>& out) {
  if (s.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = utf8_next(s, i);
    if (pred(cp)) {
      if (last < b) out.push_back({last, b, false});
      out.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) out.push_back({last, s.size(), false});
}

SplitBehavior split_behavior_from_json(const json& j) {
  std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  throw Error("unknown split behavior: " + j.dump().substr(0, 60));
}

void split_piece(const Piece& p, const std::vector<Span>& spans, SplitBehavior behavior, std::vector<Piece>& out) {
  // (start, end, remove) after folding matches into their neighbours as HF's NormalizedString::split.
  thread_local std::vector<Span> parts;
  parts.clear();
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Span& s : spans) parts.push_back({s.start, s.end, false});
      break;
    case SplitBehavior::Removed:
      parts.assign(spans.begin(), spans.end());
      break;
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const Span& s : spans) {
        if (s.match == prev_match && !parts.empty()) parts.back().end = s.end;
        else parts.push_back({s.start, s.end, false});
        prev_match = s.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const Span& s : spans) {
        if (s.match && !prev_match && !parts.empty()) parts.back().end = s.end;
        else parts.push_back({s.start, s.end, false});
        prev_match = s.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = spans.size(); k-- > 0;) {
        const Span& s = spans[k];
        if (s.match && !prev_match && !parts.empty()) parts.back().start = s.start;
        else parts.push_back({s.start, s.end, false});
        prev_match = s.match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const Span& s : parts) {
    if (s.match || s.end <= s.start) continue;  // `match` here means "remove"
    Piece q;
    q.text = p.text.substr(s.start, s.end - s.start);
    q.at_origin = p.at_origin && s.start == 0;
    out.push_back(std::move(q));
  }
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

namespace {

// Applies fn(piece, out) to every piece that is not an added token.
template <class Fn>
void for_each_split(std::vector<Piece>& pieces, Fn fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    if (p.id >= 0) out.push_back(std::move(p));
    else fn(p, out);
  }
  pieces.swap(out);
}

template <class Pred>
void split_on_chars(std::vector<Piece>& pieces, Pred pred, SplitBehavior behavior) {
  thread_local std::vector<Span> spans;
  for_each_split(pieces, [&](Piece& p, std::vector<Piece>& out) {
    spans.clear();
    find_char_matches(p.text, pred, spans);
    split_piece(p, spans, behavior, out);
  });
}

class SplitPre final : public PreTokenizer {
 public:
  explicit SplitPre(const json& j)
      : pattern_(Pattern::from_json(field(j, "pattern"))),
        behavior_(split_behavior_from_json(field(j, "behavior"))),
        invert_(get_bool(j, "invert", false)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece& p, std::vector<Piece>& out) {
      spans.clear();
      pattern_.find_matches(p.text, spans);
      if (invert_)
        for (Span& s : spans) s.match = !s.match;
      split_piece(p, spans, behavior_, out);
    });
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, as the ByteLevel pre-tokenizer uses when use_regex is set.
const Regex& gpt2_regex() {
  static const Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  return re;
}

void byte_level_map(std::string& s) {
  const auto& t = byte_level_tables();
  bool plain = true;
  for (char c : s) plain &= t.byte_to_utf8[static_cast<unsigned char>(c)].size() == 1;
  if (plain) return;
  std::string r;
  r.reserve(s.size() * 2);
  for (char c : s) r += t.byte_to_utf8[static_cast<unsigned char>(c)];
  s.swap(r);
}

class ByteLevelPre final : public PreTokenizer {
 public:
  explicit ByteLevelPre(const json& j)
      : add_prefix_space_(get_bool(j, "add_prefix_space", true)), use_regex_(get_bool(j, "use_regex", true)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece& p, std::vector<Piece>& out) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, 1, ' ');
      size_t first = out.size();
      if (use_regex_) {
        m.clear();
        gpt2_regex().find_all(p.text, m);
        // Isolated split of the regex matches: every match and every gap becomes a piece.
        size_t prev = 0;
        auto emit = [&](size_t a, size_t b) {
          if (b <= a) return;
          Piece q;
          q.text = p.text.substr(a, b - a);
          q.at_origin = p.at_origin && a == 0;
          out.push_back(std::move(q));
        };
        for (auto [a, b] : m) {
          emit(prev, a);
          emit(a, b);
          prev = b;
        }
        emit(prev, p.text.size());
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
      for (size_t k = first; k < out.size(); ++k) byte_level_map(out[k].text);
    });
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(const json& j) : individual_(get_bool(j, "individual_digits", false)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, is_numeric, individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }

 private:
  bool individual_;
};

class PunctuationPre final : public PreTokenizer {
 public:
  explicit PunctuationPre(const json& j)
      : behavior_(j.contains("behavior") ? split_behavior_from_json(j["behavior"]) : SplitBehavior::Isolated) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, is_punctuation, behavior_);
  }

 private:
  SplitBehavior behavior_;
};

class WhitespacePre final : public PreTokenizer {
 public:
  // HF: onig `\w+|[^\w\s]+`, keeping the matches. Oniguruma's Unicode \w is UTS #18's word
  // class (Alphabetic, Mark, Nd, Pc, Join_Control), wider than PCRE2's, so spell it out.
  WhitespacePre()
      : re_(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\s]+)") {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    for_each_split(pieces, [&](Piece& p, std::vector<Piece>& out) {
      m.clear();
      re_.find_all(p.text, m);
      for (auto [a, b] : m) {
        if (b <= a) continue;
        Piece q;
        q.text = p.text.substr(a, b - a);
        q.at_origin = p.at_origin && a == 0;
        out.push_back(std::move(q));
      }
    });
  }

 private:
  Regex re_;
};

class WhitespaceSplitPre final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, is_whitespace, SplitBehavior::Removed);
  }
};

class BertPre final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, is_whitespace, SplitBehavior::Removed);
    split_on_chars(pieces, is_punctuation, SplitBehavior::Isolated);
  }
};

class CharDelimiterPre final : public PreTokenizer {
 public:
  explicit CharDelimiterPre(const json& j) {
    std::string d = get_string(j, "delimiter");
    size_t i = 0;
    if (d.empty()) throw Error("CharDelimiterSplit: empty delimiter");
    delim_ = utf8_next(d, i);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    uint32_t d = delim_;
    split_on_chars(pieces, [d](uint32_t c) { return c == d; }, SplitBehavior::Removed);
  }

 private:
  uint32_t delim_;
};

enum class PrependScheme { First, Always, Never };

PrependScheme prepend_scheme_from_json(const json& j) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    std::string s = get_string(j, "prepend_scheme");
    if (s == "first") return PrependScheme::First;
    if (s == "always") return PrependScheme::Always;
    if (s == "never") return PrependScheme::Never;
    throw Error("Metaspace: unknown prepend_scheme '" + s + "'");
  }
  return get_bool(j, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

std::string metaspace_replacement(const json& j) {
  std::string r = get_string(j, "replacement", "\xE2\x96\x81");
  if (r.empty() || utf8_valid_prefix(r) != r.size() || utf8_seq_len(static_cast<unsigned char>(r[0])) != r.size())
    throw Error("Metaspace: replacement must be one character");
  return r;
}

class MetaspacePre final : public PreTokenizer {
 public:
  explicit MetaspacePre(const json& j)
      : rep_(metaspace_replacement(j)), scheme_(prepend_scheme_from_json(j)), split_(get_bool(j, "split", true)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece& p, std::vector<Piece>& out) {
      std::string t;
      t.reserve(p.text.size() + 8);
      for (char c : p.text) {
        if (c == ' ') t += rep_;
        else t += c;
      }
      bool starts = t.compare(0, rep_.size(), rep_) == 0;
      if (!starts && (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && p.at_origin)))
        t.insert(0, rep_);
      p.text.swap(t);
      if (!split_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        return;
      }
      spans.clear();
      size_t prev = 0, pos = 0;
      while ((pos = p.text.find(rep_, pos)) != std::string::npos) {
        if (prev != pos) spans.push_back({prev, pos, false});
        spans.push_back({pos, pos + rep_.size(), true});
        pos += rep_.size();
        prev = pos;
      }
      if (prev != p.text.size() || p.text.empty()) spans.push_back({prev, p.text.size(), false});
      split_piece(p, spans, SplitBehavior::MergedWithNext, out);
    });
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(const json& j) {
    const json& list = field(j, "pretokenizers");
    if (!list.is_array()) throw Error("Sequence pre-tokenizer: 'pretokenizers' must be a list");
    for (const json& e : list)
      if (auto p = make_pre_tokenizer(e)) steps_.push_back(std::move(p));
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps_) s->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error("pre_tokenizer must be an object");
  std::string type = get_string(j, "type");
  if (type == "Split") return std::make_unique<SplitPre>(j);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPre>(j);
  if (type == "Digits") return std::make_unique<DigitsPre>(j);
  if (type == "Punctuation") return std::make_unique<PunctuationPre>(j);
  if (type == "Whitespace") return std::make_unique<WhitespacePre>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
  if (type == "CharDelimiterSplit") return std::make_unique<CharDelimiterPre>(j);
  if (type == "Metaspace") return std::make_unique<MetaspacePre>(j);
  if (type == "Sequence") return std::make_unique<SequencePre>(j);
  throw Error("unsupported pre_tokenizer type: " + type);
}

}  // namespace gale::tok
