#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <mutex>

#include "core/error.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  pcre2_match_context* mctx = nullptr;
  bool jit = false;
  std::string pattern;
};

namespace {

// One match-data block per thread and regex-size class, reused across calls.
struct MatchData {
  pcre2_match_data* md = nullptr;
  ~MatchData() {
    if (md) pcre2_match_data_free(md);
  }
};

pcre2_match_data* thread_match_data() {
  thread_local MatchData m;
  if (!m.md) m.md = pcre2_match_data_create(32, nullptr);
  return m.md;
}

}  // namespace

Regex::Regex(const std::string& pattern) : impl_(std::make_unique<Impl>()) {
  impl_->pattern = pattern;
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    throw Error("invalid regex '" + pattern + "' at offset " + std::to_string(off) + ": " +
                reinterpret_cast<char*>(buf));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
  impl_->mctx = pcre2_match_context_create(nullptr);
  pcre2_set_match_limit(impl_->mctx, 10'000'000);
  pcre2_set_depth_limit(impl_->mctx, 100'000);
}

Regex::~Regex() {
  if (impl_->mctx) pcre2_match_context_free(impl_->mctx);
  if (impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = thread_match_data();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  size_t last_end = SIZE_MAX;
  while (pos <= s.size()) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, impl_->mctx)
                        : pcre2_match(impl_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, impl_->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw Error("regex '" + impl_->pattern + "' failed to match (PCRE2 error " + std::to_string(rc) + ")");
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t a = ov[0], b = ov[1];
    if (a == b) {
      if (a != last_end) out.emplace_back(a, b);
      if (a >= s.size()) break;
      pos = a + utf8_seq_len(static_cast<unsigned char>(s[a]));
      continue;
    }
    out.emplace_back(a, b);
    last_end = b;
    pos = b;
  }
}

std::string Regex::escape(std::string_view lit) {
  std::string r;
  for (char c : lit) {
    if (std::string_view("\\^$.|?*+()[]{}-#&~ \t\n\r\f\v").find(c) != std::string_view::npos) {
      if (c == '\n') { r += "\\n"; continue; }
      if (c == '\t') { r += "\\t"; continue; }
      if (c == '\r') { r += "\\r"; continue; }
      if (c == '\f') { r += "\\f"; continue; }
      if (c == '\v') { r += "\\x0B"; continue; }
      if (c == ' ') { r += "\\x20"; continue; }
      r += '\\';
    }
    r += c;
  }
  return r;
}

}  // namespace gale::tok
