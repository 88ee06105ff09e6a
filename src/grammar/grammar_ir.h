// The grammar IR: rules of alternatives of sequences, each element a set of bytes or a rule
// reference. Char classes over code points are lowered to alternatives of byte-set sequences
// (UTF-8), repetition to right-recursive helper rules, so the matcher only ever sees bytes.
// Flattened for the matcher: every alternative is a run of elems ending with an End element.
#pragma once
#include <bitset>
#include <cstdint>
#include <string>
#include <vector>

namespace gale {

struct GElem {
  enum Kind : uint8_t { Bytes, Rule, End };
  Kind kind = End;
  uint32_t arg = 0;  // Bytes: index into Grammar::sets; Rule: rule index
};

struct Grammar {
  std::vector<std::string> names;              // [rules]
  std::vector<std::vector<int32_t>> alts;      // [rules][alternatives]: index of the first elem
  std::vector<GElem> elems;                    // all alternatives, each ended by End
  std::vector<std::bitset<256>> sets;          // byte sets
  int32_t root = 0;
  size_t num_rules() const { return names.size(); }
};

}  // namespace gale
