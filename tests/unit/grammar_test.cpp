// The grammar engine (src/grammar) against independent references: std::regex for regex and GBNF
// languages (every string over a small alphabet up to a length, matched both ways), the viable
// prefixes of an enumerated finite language for the token mask, and direct simulation
// (accept_token + rollback) for the cached mask on a real 128k vocabulary.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "grammar/grammar.h"
#include "tokenizer/tokenizer.h"

namespace gale {
namespace {

std::shared_ptr<const CompiledGrammar> compile(const std::string& gbnf, std::vector<std::string> vocab = {"x"}) {
  auto t = std::make_shared<const TokenTable>(std::move(vocab), std::vector<int32_t>{});
  return std::make_shared<const CompiledGrammar>(parse_gbnf(gbnf), t);
}

bool full_match(const std::shared_ptr<const CompiledGrammar>& g, const std::string& s) {
  GrammarMatcher m(g);
  return m.accept_bytes(s) && m.can_terminate();
}

void all_strings(const std::string& alphabet, size_t max_len, std::vector<std::string>& out) {
  out.push_back("");
  for (size_t start = 0, len = 1; len <= max_len; ++len) {
    size_t end = out.size();
    for (size_t i = start; i < end; ++i)
      for (char c : alphabet) out.push_back(out[i] + c);
    start = end;
  }
}

// The same language written as GBNF and as an ECMAScript regex.
struct Case {
  const char* gbnf;
  const char* regex;
};

TEST(Grammar, GbnfMatchesStdRegexOnEveryShortString) {
  const Case cases[] = {
      {"root ::= \"ab\" | \"a\" [bc]* \"d\"", "ab|a[bc]*d"},
      {"root ::= ( \"a\" | \"b\" )+ \"c\"?", "(a|b)+c?"},
      {"root ::= x{2,3} y\nx ::= [ab]\ny ::= \"c\" | ", "[ab]{2,3}c?"},
      {"root ::= [^a]{1,} # a comment\n", "[^a]+"},
      {"root ::= \"a\"{3}", "aaa"},
      {"root ::= \"a\"{2,}", "a{2,}"},
      {"root ::= ( \"ab\" )* \"b\" \"\"", "(ab)*b"},
      {"root ::= e\ne ::= \"(\" e \")\" | \"c\"", "c|\\(c\\)|\\(\\(c\\)\\)|\\(\\(\\(c\\)\\)\\)"},
      {"root ::=\n  \"a\"\n  | \"b\" \"c\"\n", "a|bc"},
      {"root ::= [a-c] . [^b-c]", "[a-c][\\s\\S][^b-c]"},
  };
  std::vector<std::string> strings;
  all_strings("abc()", 7, strings);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.gbnf);
    auto g = compile(c.gbnf);
    std::regex re(c.regex);
    for (const std::string& s : strings) ASSERT_EQ(full_match(g, s), std::regex_match(s, re)) << "'" << s << "'";
  }
}

TEST(Grammar, RegexFrontEndMatchesStdRegex) {
  const char* regexes[] = {"[a-c]{2,4}", "a(b|c)*d?", "(?:ab|ba)+", "\\d+\\.\\d{1,2}", "[^ab]x?", "a.c",
                           "\\w\\W?", "^(abc|a)$", "[\\d\\s]{1,3}", "x*y+z?", "(a|)b"};
  std::vector<std::string> strings;
  all_strings("abcdxyz1. _", 5, strings);
  for (const char* r : regexes) {
    SCOPED_TRACE(r);
    auto g = compile(regex_to_gbnf(r));
    std::regex re(r);
    for (const std::string& s : strings) ASSERT_EQ(full_match(g, s), std::regex_match(s, re)) << "'" << s << "'";
  }
}

TEST(Grammar, Utf8ClassesMatchCodePoints) {
  auto g = compile("root ::= [α-ω€] [^a]");
  EXPECT_TRUE(full_match(g, "βx"));
  EXPECT_TRUE(full_match(g, "€€"));
  EXPECT_TRUE(full_match(g, "ω\xF0\x9F\x98\x80"));  // an astral character as [^a]
  EXPECT_FALSE(full_match(g, "ab"));
  EXPECT_FALSE(full_match(g, "βa"));
  EXPECT_FALSE(full_match(g, "\xCE"));  // half a character
  GrammarMatcher m(g);
  EXPECT_TRUE(m.accept_bytes("\xCE"));   // a prefix of β
  EXPECT_FALSE(m.accept_bytes("\x41"));  // not a continuation byte
}

TEST(Grammar, ErrorsAreClear) {
  auto expect_error = [](const std::string& gbnf, const std::string& part) {
    try {
      parse_gbnf(gbnf);
      ADD_FAILURE() << "no error for " << gbnf;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error("foo ::= \"a\"", "no 'root'");
  expect_error("root ::= bar", "'bar' is used but not defined");
  expect_error("root ::= root \"a\" | \"b\"", "left-recursive");
  expect_error("root ::= a\na ::= \"x\"? root", "left-recursive");
  expect_error("root ::= \"abc", "unterminated string");
  expect_error("root ::= [b-a]", "out of order");
  expect_error("root ::= \"a\"{3,1}", "n < m");
  expect_error("root ::= \"a\"{99999}", "repetition count");
  expect_error("root ::= (\"a\"", "expected ')'");
  expect_error("root ::= \"\\q\"", "unknown escape");
  EXPECT_THROW(regex_to_gbnf("(a"), Error);
  EXPECT_THROW(regex_to_gbnf("a(?=b)"), Error);
  EXPECT_THROW(regex_to_gbnf("(a)\\1"), Error);
  // A quantifier of a quantifier is Python's "multiple repeat" (a fuzz timeout when it nested);
  // a lazy or possessive mark after one is not.
  EXPECT_THROW(regex_to_gbnf("a+++"), Error);
  EXPECT_THROW(regex_to_gbnf("a*{2}"), Error);
  EXPECT_THROW(regex_to_gbnf("a?*"), Error);
  EXPECT_NO_THROW(regex_to_gbnf("a+?b*+c{1,2}?"));
  EXPECT_THROW(json_schema_to_gbnf(nlohmann::json::parse(R"({"not": {}})")), Error);
  EXPECT_THROW(json_schema_to_gbnf(nlohmann::json::parse(R"({"$ref": "#/$defs/x"})")), Error);
  EXPECT_THROW(choice_to_gbnf({}), Error);
}

// The mask against the viable prefixes of an enumerated finite language.
TEST(Grammar, MaskEqualsViablePrefixesOfFiniteLanguage) {
  const char* regex = "(ab|abc|b[ac]{1,2}|cab)(c|ab)?";
  std::vector<std::string> all;
  all_strings("abc", 7, all);
  std::regex re(regex);
  std::vector<std::string> lang;
  for (const std::string& s : all)
    if (std::regex_match(s, re)) lang.push_back(s);
  // A vocabulary of every string of 1-3 letters, plus an eos id at the end.
  std::vector<std::string> vocab;
  all_strings("abc", 3, vocab);
  vocab.erase(vocab.begin());
  vocab.push_back("");  // eos
  int32_t eos = int32_t(vocab.size() - 1);
  auto t = std::make_shared<const TokenTable>(vocab, std::vector<int32_t>{eos});
  auto g = std::make_shared<const CompiledGrammar>(parse_gbnf(regex_to_gbnf(regex)), t);
  auto viable = [&](const std::string& p) {
    return std::any_of(lang.begin(), lang.end(), [&](const std::string& s) { return s.rfind(p, 0) == 0; });
  };
  std::mt19937 rng(7);
  for (int walk = 0; walk < 200; ++walk) {
    GrammarMatcher m(g);
    std::string prefix;
    std::vector<uint32_t> mask(mask_words(t->vocab));
    while (true) {
      m.fill_mask(mask);
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < int32_t(vocab.size()); ++id) {
        bool bit = mask[size_t(id) / 32] >> (id % 32) & 1u;
        bool want = id == eos ? std::find(lang.begin(), lang.end(), prefix) != lang.end() : viable(prefix + vocab[size_t(id)]);
        ASSERT_EQ(bit, want) << "prefix '" << prefix << "' token '" << vocab[size_t(id)] << "'";
        if (bit) allowed.push_back(id);
      }
      ASSERT_FALSE(allowed.empty());
      int32_t pick = allowed[rng() % allowed.size()];
      ASSERT_TRUE(m.accept_token(pick));
      if (pick == eos) break;
      prefix += vocab[size_t(pick)];
    }
    EXPECT_TRUE(m.is_terminated());
    ASSERT_TRUE(std::regex_match(prefix, re)) << prefix;
  }
}

TEST(Grammar, RollbackRestoresState) {
  auto g = compile(regex_to_gbnf("(ab)+c"), {"a", "b", "c", "ab"});
  GrammarMatcher m(g);
  ASSERT_TRUE(m.accept_token(3));  // ab
  ASSERT_TRUE(m.accept_token(0));  // a
  EXPECT_FALSE(m.accept_token(2)); // c after a: no
  ASSERT_TRUE(m.accept_token(1));  // b
  ASSERT_TRUE(m.accept_token(2));  // c
  EXPECT_TRUE(m.can_terminate());
  m.rollback(3);  // back to after "ab"
  EXPECT_EQ(m.num_accepted(), 1);
  EXPECT_FALSE(m.can_terminate());
  EXPECT_FALSE(m.accept_token(1));  // b after ab: no
  ASSERT_TRUE(m.accept_token(2));
  EXPECT_TRUE(m.can_terminate());
  EXPECT_THROW(m.rollback(3), Error);
}

TEST(Grammar, JsonSchemaOutputsAreValidJson) {
  auto schema = nlohmann::json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 5},
      "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 2},
      "kind": {"const": "x"},
      "next": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pt"}]}
    },
    "required": ["name", "kind"],
    "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}
  })");
  auto g = compile(json_schema_to_gbnf(schema));
  EXPECT_TRUE(full_match(g, R"({"kind":"x","name":"bob"})"));
  EXPECT_TRUE(full_match(g, R"({ "age": -12, "kind": "x", "name": "", "next": {"x": 1.5e3}, "tags": ["a", 3] })"));
  EXPECT_TRUE(full_match(g, R"({"kind":"x","name":"\u00e9\n","next":null})"));
  EXPECT_FALSE(full_match(g, R"({"name":"bob"})"));                       // kind required
  EXPECT_FALSE(full_match(g, R"({"kind":"x","name":"toolong"})"));        // maxLength
  EXPECT_FALSE(full_match(g, R"({"kind":"x","name":"a","tags":["c"]})"));  // enum
  EXPECT_FALSE(full_match(g, R"({"kind":"x","name":"a","age":1.5})"));    // integer
  EXPECT_FALSE(full_match(g, R"({"kind":"x","name":"a","tags":["a","b","a"]})"));  // maxItems
  EXPECT_FALSE(full_match(g, R"({"kind":"x","name":"a","extra":1})"));
  auto obj = compile(json_object_gbnf());
  EXPECT_TRUE(full_match(obj, R"({"a": [1, {"b": null}, "c\"d", true, -0.5E+10]})"));
  EXPECT_FALSE(full_match(obj, R"([1])"));
  EXPECT_FALSE(full_match(obj, R"({"a": 01})"));
  auto ch = compile(choice_to_gbnf({"yes", "no", "maybe \"so\""}));
  EXPECT_TRUE(full_match(ch, "no"));
  EXPECT_TRUE(full_match(ch, "maybe \"so\""));
  EXPECT_FALSE(full_match(ch, "n"));
}

// On a real 128k vocabulary (Llama-3.1's), the cached mask equals direct simulation of every
// token from the current state, along sampled paths through a JSON schema.
TEST(Grammar, CachedMaskEqualsDirectSimulationOnRealVocabulary) {
  std::string dir = std::string(GALE_REAL_TOKENIZERS_DIR) + "/tokenizer-llama3_1/models";
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::load(dir);
  } catch (const Error& e) {
    GTEST_SKIP() << "no Llama-3.1 tokenizer (tests/tokenizers: npm ci): " << e.what();
  }
  int64_t vocab = int64_t(tok->vocab_size());
  auto eos = tok->token_to_id("<|eot_id|>");
  ASSERT_TRUE(eos);
  auto t = std::make_shared<const TokenTable>(*tok, vocab, std::vector<int32_t>{*eos});
  // Byte-level: a token's bytes re-encode to it (for a plain ASCII word).
  auto ids = tok->encode("hello", false);
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(t->bytes[size_t(ids[0])], "hello");
  GrammarCompiler compiler(t);
  auto g = compiler.compile({ConstraintSpec::Kind::JsonSchema,
                             R"({"type":"object","properties":{"a":{"type":"string","maxLength":6},
                                 "b":{"type":"array","items":{"type":"integer"},"maxItems":3},
                                 "c":{"enum":["red","green"]}},"required":["a","b","c"]})"});
  EXPECT_EQ(g, compiler.compile({ConstraintSpec::Kind::JsonSchema,
                                 R"({"type":"object","properties":{"a":{"type":"string","maxLength":6},
                                 "b":{"type":"array","items":{"type":"integer"},"maxItems":3},
                                 "c":{"enum":["red","green"]}},"required":["a","b","c"]})"}));  // cached
  std::mt19937 rng(3);
  std::vector<uint32_t> mask(mask_words(vocab));
  for (int walk = 0; walk < 3; ++walk) {
    GrammarMatcher m(g);
    std::string out;
    for (int step = 0; step < 40 && !m.is_terminated(); ++step) {
      m.fill_mask(mask);
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < int32_t(vocab); ++id) {
        bool bit = mask[size_t(id) / 32] >> (id % 32) & 1u;
        bool direct = m.accept_token(id);
        if (direct) m.rollback(1);
        ASSERT_EQ(bit, direct) << "token " << id << " '" << t->bytes[size_t(id)] << "' after '" << out << "'";
        if (bit) allowed.push_back(id);
      }
      ASSERT_FALSE(allowed.empty()) << out;
      int32_t pick = allowed[rng() % allowed.size()];
      ASSERT_TRUE(m.accept_token(pick));
      if (pick != *eos) out += t->bytes[size_t(pick)];
    }
  }
}

}  // namespace
}  // namespace gale
