// The fast tokenizer.json path (src/tokenizer/json_scan.*) must give the same tokenizer as the
// plain nlohmann parse, and every malformed vocab / merges section one clear error.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"
#include "tokenizer/json_scan.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string doc(const std::string& vocab, const std::string& merges, const std::string& extra = "") {
  return R"({"version": "1.0", "added_tokens": [], )" + extra + R"("model": {"type": "BPE", "vocab": )" + vocab +
         R"(, "merges": )" + merges + R"(, "unk_token": null}, "decoder": null})";
}

std::string error_of(const std::string& text) {
  try {
    gale::Tokenizer::from_json(text);
  } catch (const gale::Error& e) {
    return e.what();
  }
  return "";
}

// The scanners' output, collected (their views live only during the callback).
bool scan_vocab(std::string_view text, std::vector<std::pair<std::string, int64_t>>& out) {
  out.clear();
  return gale::tok::scan_vocab(text, [&](std::string_view t, int64_t id) { out.emplace_back(t, id); });
}
bool scan_merges(std::string_view text, std::vector<std::pair<std::string, std::string>>& out) {
  out.clear();
  return gale::tok::scan_merges(text, [&](std::string_view a, std::string_view b) { out.emplace_back(a, b); });
}

TEST(TokenizerLoad, ScannerDecodesEscapesAndBothMergeForms) {
  std::vector<std::pair<std::string, int64_t>> v;
  ASSERT_TRUE(scan_vocab(R"({"a\"b": 0, "\u00e9\ud83d\ude00": 7, "\n\t\\/": 12, )"
                         "\"x\\u00e9y\xc3\xa9\": 3} ", v));
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].first, "a\"b");
  EXPECT_EQ(v[1].first, "\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(v[1].second, 7);
  EXPECT_EQ(v[2].first, "\n\t\\/");
  EXPECT_EQ(v[3].first, "x\xc3\xa9y\xc3\xa9");
  std::vector<std::pair<std::string, std::string>> m;
  ASSERT_TRUE(scan_merges(R"([" a b", ["c d", "e"], "f\u0020g h", ["\u0069", "j"]])", m));
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0], (std::pair<std::string, std::string>(" a", "b")));
  EXPECT_EQ(m[1], (std::pair<std::string, std::string>("c d", "e")));
  EXPECT_EQ(m[2], (std::pair<std::string, std::string>("f", "g h")));
  EXPECT_EQ(m[3], (std::pair<std::string, std::string>("i", "j")));
  // Declined (left to nlohmann): lone surrogates, raw control characters, odd numbers, trailing
  // commas, invalid UTF-8 (alone, before an escape, truncated at the closing quote).
  for (const char* bad : {R"({"\ud83d": 0})", "{\"a\x01\": 0}", R"({"a": -1})", R"({"a": 01})", R"({"a": 1.0})",
                          R"({"a": 1,})", "{\"\xff\": 0}", "{\"\xc3\\n\": 0}", "{\"a\xe2\x82\": 0}",
                          "{\"\xed\xa0\x80\": 0}"})
    EXPECT_FALSE(scan_vocab(bad, v)) << bad;
  EXPECT_FALSE(scan_merges(R"(["ab"])", m));
  EXPECT_FALSE(scan_merges(R"([["a", "b", "c"]])", m));
}

TEST(TokenizerLoad, FastAndPlainPathsAgree) {
  // Same tokenizer once with the sections found by the scanner and once through nlohmann alone
  // (a second "model" key makes split_bpe_sections decline).
  const std::string vocab = R"({"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4, "\u00e9": 5})";
  const std::string merges = R"(["a b", ["ab", "c"]])";
  gale::tok::BpeSections s;
  const std::string full = doc(vocab, merges);  // the sections are views into it
  ASSERT_TRUE(gale::tok::split_bpe_sections(full, s));
  EXPECT_EQ(s.vocab, vocab);
  EXPECT_EQ(s.merges, merges);
  const std::string two_models = doc(vocab, merges, R"("model": 1, )");
  EXPECT_FALSE(gale::tok::split_bpe_sections(two_models, s));
  auto fast = gale::Tokenizer::from_json(doc(vocab, merges));
  EXPECT_EQ(fast->encode("abcab\xc3\xa9", false), (std::vector<int32_t>{4, 2, 5}));
  EXPECT_EQ(fast->decode(std::vector<int32_t>{4, 5}), "abc \xc3\xa9");
}

TEST(TokenizerLoad, MalformedSectionsGiveOneClearError) {
  EXPECT_NE(error_of(doc(R"({"a": 0, "b": })", "[]")).find("parse error"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": -3})", "[]")).find("out of range"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 1.5})", "[]")).find("not an integer"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"\ud800": 0})", "[]")).find("surrogate"), std::string::npos);
  EXPECT_NE(error_of(doc(R"(["a"])", "[]")).find("model.vocab must be an object"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", R"(["ab"])")).find("is not of the form"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", R"([["a"]])")).find("neither"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", R"(["a b"])")).find("missing from the vocab"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", "{}")).find("model.merges must be a list"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", "[]") + " x").find("parse error"), std::string::npos);
  EXPECT_NE(error_of(doc(R"({"a": 0})", "[]", R"("normalizer": {"type": "Nope"}, )")).find("Nope"), std::string::npos);
  // 30 digits: the scanner multiplied past int64 (undefined behaviour, found by fuzz_tokenizer_json
  // under UBSan) before refusing the number; nlohmann's path then names the error.
  EXPECT_NE(error_of(doc(R"({"a": 123456789012345678901234567890})", "[]")), "");
}

}  // namespace

namespace {

// `levels` Sequences of `kind` around one plain component, as tokenizer.json nests them.
std::string nested(const char* list_key, const std::string& leaf, int levels) {
  std::string open, close;
  for (int i = 0; i < levels; ++i) {
    open += std::string(R"({"type": "Sequence", ")") + list_key + "\": [";
    close += "]}";
  }
  return open + leaf + close;
}

// Issue 15: a Sequence nested 50k deep overflowed the stack (SIGSEGV) in the recursive
// component builders; the document is refused, by name, before they run. Shallow nesting works.
TEST(TokenizerLoad, DeeplyNestedSequencesAreOneClearError) {
  const std::string vocab = R"({"a": 0, "b": 1, "ab": 2})", merges = R"(["a b"])";
  struct Kind {
    const char *key, *list, *leaf;
  } kinds[] = {{"pre_tokenizer", "pretokenizers", R"({"type": "Whitespace"})"},
               {"normalizer", "normalizers", R"({"type": "Lowercase"})"},
               {"post_processor", "processors", R"({"type": "ByteLevel", "trim_offsets": false})"}};
  for (const Kind& k : kinds) {
    for (bool fast : {true, false}) {  // the fast vocab scanner, and nlohmann's whole-document path
      auto text = [&](int levels) {
        std::string extra = "\"" + std::string(k.key) + "\": " + nested(k.list, k.leaf, levels) + ", ";
        // A duplicate "model" key makes split_bpe_sections give up: the whole-document path.
        if (!fast) extra += R"("model": {"type": "BPE", "vocab": {}, "merges": []}, )";
        return doc(vocab, merges, extra);
      };
      EXPECT_EQ(error_of(text(3)), "") << k.key << " fast=" << fast;
      std::string e = error_of(text(50000));
      EXPECT_NE(e.find("nests deeper than 128 levels"), std::string::npos) << k.key << ": " << e;
    }
  }
  // The decoder sits after the model in doc(); replace its null.
  std::string d = doc(vocab, merges);
  d.replace(d.rfind("null"), 4, nested("decoders", R"({"type": "Fuse"})", 50000));
  EXPECT_NE(error_of(d).find("nests deeper than 128 levels"), std::string::npos) << error_of(d);
}

}  // namespace
