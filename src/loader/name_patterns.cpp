#include "loader/name_patterns.h"

#include "core/error.h"

namespace gale {

namespace {

bool is_regex(const std::string& p) { return p.rfind("re:", 0) == 0; }

}  // namespace

std::string module_name_of(const std::string& tensor_name) {
  static const std::string kSuffix = ".weight";
  if (tensor_name.size() > kSuffix.size() &&
      tensor_name.compare(tensor_name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0)
    return tensor_name.substr(0, tensor_name.size() - kSuffix.size());
  return tensor_name;
}

// Iterative with one backtrack point (the last `*`): linear in practice, no recursion.
bool glob_match(const std::string& p, const std::string& s) {
  size_t pi = 0, si = 0, star = std::string::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi, ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

NamePatterns::NamePatterns(std::vector<std::string> patterns, const std::string& what) : patterns_(std::move(patterns)) {
  regexes_.resize(patterns_.size());
  for (size_t i = 0; i < patterns_.size(); ++i) {
    const std::string& p = patterns_[i];
    if (p.empty() || p == "re:") throw Error(what + ": empty pattern");
    if (p.size() > 1000) throw Error(what + ": pattern longer than 1,000 characters");
    if (!is_regex(p)) continue;
    try {
      regexes_[i] = std::regex(p.substr(3), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(what + " '" + p + "': not a valid regular expression (" + e.what() + ")");
    }
  }
}

int NamePatterns::match_index(const std::string& tensor_name) const {
  const std::string module = module_name_of(tensor_name);
  for (size_t i = 0; i < patterns_.size(); ++i) {
    const std::string& p = patterns_[i];
    const bool hit = is_regex(p) ? std::regex_search(module, regexes_[i], std::regex_constants::match_continuous)
                                 : glob_match(p, module) || glob_match(p, tensor_name);
    if (hit) return int(i);
  }
  return -1;
}

bool NamePatterns::matches(const std::string& tensor_name) const { return match_index(tensor_name) >= 0; }

}  // namespace gale
