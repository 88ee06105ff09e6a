// libFuzzer: arbitrary bytes as a constraint (the first byte picks GBNF, JSON schema, regex or a
// choice list), compiled against a small vocabulary, then a matcher fed the input's bytes and a
// few masks filled and tokens accepted. gale::Error (the 400 a server answers) is the only
// exception allowed; a crash, a hang or any other exception is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "grammar/grammar.h"

namespace {

std::shared_ptr<const gale::TokenTable> vocab() {
  static const auto t = [] {
    std::vector<std::string> v;
    for (int b = 1; b < 256; ++b) v.push_back(std::string(1, char(b)));
    for (const char* s : {"\"", "{\"", "\":", "\",", "true", "false", "null", "ab", "abc", "12", "é", "€", "\xF0\x9F\x98\x80",
                          " \"", "}\n", "[1", "\\n", "\\u00"})
      v.push_back(s);
    v.push_back("");  // eos
    return std::make_shared<const gale::TokenTable>(v, std::vector<int32_t>{int32_t(v.size() - 1)});
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const gale::ConstraintSpec::Kind kinds[] = {gale::ConstraintSpec::Kind::Grammar,
                                                     gale::ConstraintSpec::Kind::JsonSchema,
                                                     gale::ConstraintSpec::Kind::Regex,
                                                     gale::ConstraintSpec::Kind::Choice};
  gale::ConstraintSpec spec{kinds[data[0] % 4], std::string(reinterpret_cast<const char*>(data + 1), size - 1)};
  try {
    gale::GrammarCompiler gc(vocab());
    auto g = gc.compile(spec);
    gale::GrammarMatcher m(g);
    m.accept_bytes(spec.text.substr(0, 64));
    std::vector<uint32_t> mask(gale::mask_words(g->tokens().vocab));
    for (int step = 0; step < 8 && !m.is_terminated(); ++step) {
      m.fill_mask(mask);
      int32_t pick = -1;
      for (int32_t id = 0; id < int32_t(g->tokens().vocab); ++id)
        if (mask[size_t(id) / 32] >> (id % 32) & 1u) {
          pick = id;
          if ((id + step) % 3 == 0) break;
        }
      if (pick < 0) break;
      if (!m.accept_token(pick)) __builtin_trap();  // the mask allowed what the matcher refuses
    }
    if (m.num_accepted() > 0) m.rollback(1);
  } catch (const gale::Error&) {
  }
  return 0;
}
