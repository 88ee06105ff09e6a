// Patterns over checkpoint module names, as `--keep-16bit` takes them (and as quantized
// checkpoints' ignore lists spell them):
//   - "re:REGEX": an ECMAScript regex matched at the start of the module name, as
//     compressed-tensors matches its `ignore` entries (Python's re.match): "re:.*\.mlp\.down_proj$";
//   - anything else a glob over the whole module name or the whole tensor name: `*` any run of
//     characters (dots included), `?` one character: "model.layers.0.*", "*.o_proj", "lm_head".
// The module name is the tensor's name without its trailing ".weight"
// ("model.layers.0.self_attn.q_proj" for "model.layers.0.self_attn.q_proj.weight").
#pragma once
#include <regex>
#include <string>
#include <vector>

namespace gale {

class NamePatterns {
 public:
  NamePatterns() = default;
  // Throws gale::Error naming `what` (the flag) and the pattern when one is empty or a bad regex.
  explicit NamePatterns(std::vector<std::string> patterns, const std::string& what = "--keep-16bit");

  bool empty() const { return patterns_.empty(); }
  const std::vector<std::string>& patterns() const { return patterns_; }
  // Whether any pattern matches the tensor `tensor_name` (or its module name).
  bool matches(const std::string& tensor_name) const;
  // The index of the first pattern matching, or -1.
  int match_index(const std::string& tensor_name) const;

 private:
  std::vector<std::string> patterns_;
  std::vector<std::regex> regexes_;  // per pattern; unused for globs
};

// "model.layers.0.self_attn.q_proj" for "model.layers.0.self_attn.q_proj.weight"; other names as they are.
std::string module_name_of(const std::string& tensor_name);
// A glob (`*`, `?`) over the whole of s.
bool glob_match(const std::string& pattern, const std::string& s);

}  // namespace gale
