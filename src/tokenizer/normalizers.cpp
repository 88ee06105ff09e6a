// Normalizers of tokenizer.json: NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace,
// Prepend, Sequence.
#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {
namespace {

class UnicodeNorm final : public Normalizer {
 public:
  explicit UnicodeNorm(NormForm f) : form_(f) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, form_); }

 private:
  NormForm form_;
};

class Lowercase final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string r;
    r.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) append_lowercase(r, utf8_next(s, i));
    s.swap(r);
  }
};

class Strip final : public Normalizer {
 public:
  explicit Strip(const json& j) : left_(get_bool(j, "strip_left", true)), right_(get_bool(j, "strip_right", true)) {}
  void normalize(std::string& s) const override {
    size_t a = 0, b = s.size();
    if (left_) {
      while (a < b) {
        size_t i = a;
        if (!is_whitespace(utf8_next(s, i))) break;
        a = i;
      }
    }
    if (right_) {
      while (b > a) {
        size_t start;
        if (!is_whitespace(utf8_prev(s, b, start))) break;
        b = start;
      }
    }
    s = s.substr(a, b - a);
  }

 private:
  bool left_, right_;
};

class StripAccents final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    std::string r;
    size_t i = 0;
    while (i < s.size()) {
      size_t b = i;
      uint32_t cp = utf8_next(s, i);
      if (!is_mark_nonspacing(cp)) r.append(s, b, i - b);
    }
    s.swap(r);
  }
};

class Replace final : public Normalizer {
 public:
  explicit Replace(const json& j) : pattern_(Pattern::from_json(field(j, "pattern"))), content_(get_string(j, "content")) {}
  void normalize(std::string& s) const override { s = pattern_.replace_all(s, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(const json& j) : prepend_(get_string(j, "prepend")) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class SequenceNorm final : public Normalizer {
 public:
  explicit SequenceNorm(const json& j) {
    const json& list = field(j, "normalizers");
    if (!list.is_array()) throw Error("Sequence normalizer: 'normalizers' must be a list");
    for (const json& e : list)
      if (auto n = make_normalizer(e)) steps_.push_back(std::move(n));
  }
  void normalize(std::string& s) const override {
    for (const auto& n : steps_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error("normalizer must be an object");
  std::string type = get_string(j, "type");
  if (type == "NFC") return std::make_unique<UnicodeNorm>(NormForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNorm>(NormForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNorm>(NormForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNorm>(NormForm::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Strip") return std::make_unique<Strip>(j);
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Replace") return std::make_unique<Replace>(j);
  if (type == "Prepend") return std::make_unique<Prepend>(j);
  if (type == "Sequence") return std::make_unique<SequenceNorm>(j);
  throw Error("unsupported normalizer type: " + type);
}

}  // namespace gale::tok
