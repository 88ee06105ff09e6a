// Decoders of tokenizer.json. Each works on the list of token strings as HF's decode_chain does;
// the final text is their concatenation.
#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {
namespace {

// Tokens whose characters are all byte-level stand-ins become those bytes; any other token keeps
// its own UTF-8 bytes. The joined bytes are decoded lossily into one string.
class ByteLevelDec final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    const auto& t = byte_level_tables();
    std::string bytes;
    for (const std::string& tok : tokens) {
      size_t start = bytes.size();
      size_t i = 0;
      bool ok = true;
      while (i < tok.size()) {
        uint32_t cp = utf8_next(tok, i);
        if (cp >= t.cp_to_byte.size() || t.cp_to_byte[cp] < 0) {
          ok = false;
          break;
        }
        bytes.push_back(char(t.cp_to_byte[cp]));
      }
      if (!ok) {
        bytes.resize(start);
        bytes += tok;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
  bool byte_level() const override { return true; }
};

enum class Scheme { First, Always, Never };

class MetaspaceDec final : public Decoder {
 public:
  explicit MetaspaceDec(const json& j) {
    rep_ = get_string(j, "replacement", "\xE2\x96\x81");
    if (rep_.empty()) throw Error("Metaspace decoder: empty replacement");
    scheme_ = Scheme::Always;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      std::string s = get_string(j, "prepend_scheme");
      scheme_ = s == "first" ? Scheme::First : s == "never" ? Scheme::Never : Scheme::Always;
    } else if (!get_bool(j, "add_prefix_space", true)) {
      scheme_ = Scheme::Never;
    }
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& tok = tokens[i];
      if (tok.find(rep_) == std::string::npos) continue;
      std::string r;
      size_t pos = 0, q;
      // HF drops every replacement character of the first token (not just a leading one).
      const char* with = i == 0 && scheme_ != Scheme::Never ? "" : " ";
      while ((q = tok.find(rep_, pos)) != std::string::npos) {
        r.append(tok, pos, q - pos);
        r += with;
        pos = q + rep_.size();
      }
      r.append(tok, pos);
      tok.swap(r);
    }
  }

 private:
  std::string rep_;
  Scheme scheme_;
};

class ReplaceDec final : public Decoder {
 public:
  explicit ReplaceDec(const json& j) : pattern_(Pattern::from_json(field(j, "pattern"))), content_(get_string(j, "content")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = pattern_.replace_all(t, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// "<0xNN>" -> byte; a run of byte tokens becomes its UTF-8 text, or one U+FFFD per byte when
// the run is not valid UTF-8 as a whole.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

class ByteFallbackDec final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    auto flush = [&] {
      if (run.empty()) return;
      if (utf8_valid_prefix(run) == run.size()) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
    };
    for (std::string& t : tokens) {
      int b = parse_byte_token(t);
      if (b >= 0) {
        run.push_back(char(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
  bool groups_byte_tokens() const override { return true; }
};

class FuseDec final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDec final : public Decoder {
 public:
  explicit StripDec(const json& j) {
    std::string c = get_string(j, "content", " ");
    size_t i = 0;
    if (c.empty()) throw Error("Strip decoder: empty content");
    content_ = utf8_next(c, i);
    const json& a = field(j, "start");
    const json& b = field(j, "stop");
    if (!a.is_number_unsigned() || !b.is_number_unsigned()) throw Error("Strip decoder: start/stop must be counts");
    start_ = a.get<size_t>();
    stop_ = b.get<size_t>();
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t a = 0, b = t.size();
      for (size_t k = 0; k < start_ && a < b; ++k) {
        size_t i = a;
        if (utf8_next(t, i) != content_) break;
        a = i;
      }
      // HF panics here when a token runs out of characters; we just stop.
      for (size_t k = 0; k < stop_ && b > a; ++k) {
        size_t s;
        if (utf8_prev(t, b, s) != content_) break;
        b = s;
      }
      t = t.substr(a, b - a);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

// BPEDecoder: end-of-word suffix becomes a space (none after the last token).
class BpeDec final : public Decoder {
 public:
  explicit BpeDec(const json& j) : suffix_(get_string(j, "suffix", "</w>")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      std::string r;
      size_t pos = 0, q;
      while ((q = t.find(suffix_, pos)) != std::string::npos) {
        r.append(t, pos, q - pos);
        r += i + 1 == tokens.size() ? "" : " ";
        pos = q + suffix_.size();
      }
      r.append(t, pos);
      t.swap(r);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDec final : public Decoder {
 public:
  explicit SequenceDec(const json& j) {
    const json& list = field(j, "decoders");
    if (!list.is_array()) throw Error("Sequence decoder: 'decoders' must be a list");
    for (const json& e : list)
      if (auto d = make_decoder(e)) steps_.push_back(std::move(d));
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : steps_) d->decode_chain(tokens);
  }
  bool groups_byte_tokens() const override {
    for (const auto& d : steps_)
      if (d->groups_byte_tokens()) return true;
    return false;
  }
  bool byte_level() const override {
    for (const auto& d : steps_)
      if (d->byte_level()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error("decoder must be an object");
  std::string type = get_string(j, "type");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDec>(j);
  if (type == "Replace") return std::make_unique<ReplaceDec>(j);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip") return std::make_unique<StripDec>(j);
  if (type == "BPEDecoder") return std::make_unique<BpeDec>(j);
  if (type == "Sequence") return std::make_unique<SequenceDec>(j);
  throw Error("unsupported decoder type: " + type);
}

}  // namespace gale::tok
