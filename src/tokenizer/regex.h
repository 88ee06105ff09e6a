// PCRE2 (UTF + UCP, JIT) wrapper for the Oniguruma-syntax regexes in tokenizer.json.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gale::tok {

class Regex {
 public:
  // Throws gale::Error when PCRE2 rejects the pattern.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every non-overlapping match [start, end) of s (valid UTF-8), left to right, with the
  // iteration rule of Rust's regex/onig find_iter: an empty match right after the previous
  // match is skipped. Throws gale::Error if the match limit is hit (catastrophic backtracking).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

  static std::string escape(std::string_view literal);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gale::tok
