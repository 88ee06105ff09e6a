// Gale's tokenizer against Hugging Face `tokenizers`: every case in
// tests/fixtures/tokenizers/<name>/cases.json (written by tools/fixtures/gen_tokenizer_fixtures.py)
// must give exactly HF's ids and text; streamed decoding must concatenate to the full decode.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::json;

// GALE_TOKENIZER_FIXTURES points the case tests at another folder of fixtures (e.g. real
// tokenizers installed from npm, with cases.json written by tools/fixtures/hf_cases.js).
std::string tok_dir() { return std::string(GALE_FIXTURES_DIR) + "/tokenizers"; }
std::string cases_dir() {
  const char* env = std::getenv("GALE_TOKENIZER_FIXTURES");
  return env && *env ? std::string(env) : tok_dir();
}

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (!std::filesystem::exists(cases_dir())) return names;
  for (auto& e : std::filesystem::directory_iterator(cases_dir()))
    if (std::filesystem::exists(e.path() / "cases.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

std::string stream_decode(const gale::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  gale::StreamDecoder sd(tok, skip);
  std::string out;
  for (int32_t id : ids) out += sd.push(id);
  out += sd.flush();
  return out;
}

class TokenizerCases : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerCases, MatchesHuggingFace) {
  const std::string dir = cases_dir() + "/" + GetParam();
  auto tok = gale::Tokenizer::load(dir);
  json cases = read_json(dir + "/cases.json");
  int n_enc = 0, n_dec = 0, bad = 0;
  for (const json& c : cases["encode"]) {
    std::string text = c["text"];
    auto want = c["ids"].get<std::vector<int32_t>>();
    auto want_plain = c["ids_plain"].get<std::vector<int32_t>>();
    auto got = tok->encode(text, true);
    auto got_plain = tok->encode(text, false);
    ++n_enc;
    if (got != want || got_plain != want_plain) {
      if (++bad <= 15)
        ADD_FAILURE() << "encode " << json(text).dump() << "\n  want " << show(want) << "\n  got  " << show(got)
                      << "\n  want(plain) " << show(want_plain) << "\n  got(plain)  " << show(got_plain);
      else
        ADD_FAILURE() << "encode " << json(text).dump().substr(0, 80);
      continue;
    }
    // Round trip through the streaming decoder.
    for (bool skip : {false, true}) {
      std::string full = tok->decode(want, skip);
      std::string streamed = stream_decode(*tok, want, skip);
      if (streamed != full && ++bad <= 30)
        ADD_FAILURE() << "stream(skip=" << skip << ") of " << show(want) << "\n  full " << json(full).dump()
                      << "\n  got  " << json(streamed).dump();
    }
  }
  for (const json& c : cases["decode"]) {
    auto ids = c["ids"].get<std::vector<int32_t>>();
    std::string want = c["text"], want_skip = c["text_skip"];
    if (std::any_of(ids.begin(), ids.end(), [&](int32_t id) { return id < 0; })) {
      // HF cannot even take a negative id (u32); Gale rejects it.
      EXPECT_THROW(tok->decode(ids, false), gale::Error);
      continue;
    }
    std::string got = tok->decode(ids, false), got_skip = tok->decode(ids, true);
    ++n_dec;
    if (got != want || got_skip != want_skip) {
      if (++bad <= 30)
        ADD_FAILURE() << "decode " << show(ids) << "\n  want " << json(want).dump() << "\n  got  "
                      << json(got).dump() << "\n  want(skip) " << json(want_skip).dump() << "\n  got(skip)  "
                      << json(got_skip).dump();
      continue;
    }
    for (bool skip : {false, true}) {
      std::string streamed = stream_decode(*tok, ids, skip);
      if (streamed != (skip ? want_skip : want) && ++bad <= 30)
        ADD_FAILURE() << "stream(skip=" << skip << ") of " << show(ids) << "\n  want "
                      << json(skip ? want_skip : want).dump() << "\n  got  " << json(streamed).dump();
    }
  }
  std::printf("[ %s ] %d encode cases, %d decode cases, %d failures\n", GetParam().c_str(), n_enc, n_dec, bad);
  EXPECT_GE(n_enc, 200);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerCases, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(Tokenizer, StreamEmitsOnlyCompleteUtf8) {
  auto tok = gale::Tokenizer::load(tok_dir() + "/llama3_bpe");
  auto ids = tok->encode("\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80!", false);
  gale::StreamDecoder sd(*tok, false);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "partial UTF-8 leaked";
    all += piece;
  }
  all += sd.flush();
  EXPECT_EQ(all, "\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80!");
}

TEST(Tokenizer, InvalidUtf8InputNeverCrashes) {
  auto tok = gale::Tokenizer::load(tok_dir() + "/llama3_bpe");
  std::string bad = "ok \xFF\xFE \xE6\x97 \xC0\xAF end";
  auto ids = tok->encode(bad, true);
  EXPECT_FALSE(ids.empty());
  // Invalid bytes become U+FFFD before tokenization, as a lossy UTF-8 conversion would.
  EXPECT_EQ(tok->decode(ids, true), "ok \xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD end");
}

// Padded vocabularies (issue 15): the embedding has more rows than the tokenizer has tokens, so
// a model may sample an id the tokenizer does not know. HF's Tokenizer::decode
// (tokenizers/src/tokenizer/mod.rs) filter_maps ids without a token away: no text, no error.
TEST(Tokenizer, DecodeSkipsIdsPastTheVocabulary) {
  for (const char* name : {"gpt2_bpe", "llama2_spm", "added_tokens"}) {
    auto tok = gale::Tokenizer::load(tok_dir() + "/" + name);
    const int32_t past = int32_t(tok->vocab_size());
    std::vector<int32_t> known = tok->encode("Hello world, 123", false);
    ASSERT_GE(known.size(), 2u) << name;
    std::vector<int32_t> padded = {past, known[0], past + 1, past + 1000};
    padded.insert(padded.end(), known.begin() + 1, known.end());
    padded.push_back(past);
    for (bool skip : {false, true}) {
      EXPECT_EQ(tok->decode(padded, skip), tok->decode(known, skip)) << name;
      EXPECT_EQ(stream_decode(*tok, padded, skip), tok->decode(known, skip)) << name;
    }
    std::vector<int32_t> only_past{past};
    EXPECT_EQ(tok->decode(only_past), "") << name;
  }
  auto tok = gale::Tokenizer::load(tok_dir() + "/gpt2_bpe");
  std::vector<int32_t> neg{-1};
  EXPECT_THROW(tok->decode(neg), gale::Error);
}

TEST(Tokenizer, SpecialTokenQueries) {
  auto tok = gale::Tokenizer::load(tok_dir() + "/llama3_bpe");
  auto bos = tok->token_to_id("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_TRUE(tok->is_special(*bos));
  EXPECT_FALSE(tok->token_to_id("no such token").has_value());
  auto ids = tok->encode("hi", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], *bos);
}

TEST(Tokenizer, MetaspaceCutOnlyWhereNoMergeCrossesIt) {
  // With no pre-tokenizer a word is cut before each run of U+2581 (Llama-2 speed-up); the cut must
  // stay off when a token holds U+2581 after another character (here "a▁", merged first).
  auto make = [](const std::string& extra_vocab, const std::string& extra_merges) {
    return gale::Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "\u2581": 2, "\u2581b": 3,
        "\u2581\u2581": 4, "\u2581\u2581b": 5)" + extra_vocab + R"(}, "merges": [)" + extra_merges +
                                      R"("\u2581 b", "\u2581 \u2581", "\u2581\u2581 b"]}})");
  };
  auto cut = make("", "");
  EXPECT_EQ(cut->encode("a\u2581b\u2581\u2581b", false), (std::vector<int32_t>{0, 3, 2, 3}));
  EXPECT_EQ(cut->encode("\u2581\u2581b\u2581ab", false), (std::vector<int32_t>{2, 3, 2, 0, 1}));
  auto whole = make(R"(, "a\u2581": 6)", R"("a \u2581", )");
  EXPECT_EQ(whole->encode("a\u2581b\u2581\u2581b", false), (std::vector<int32_t>{6, 1, 2, 3}));
}

TEST(Tokenizer, LoaderErrorsAreClear) {
  auto expect_error = [](const std::string& text, const std::string& needle) {
    try {
      gale::Tokenizer::from_json(text);
      ADD_FAILURE() << "no error for " << text;
    } catch (const gale::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{", "tokenizer.json");
  expect_error("[]", "object");
  expect_error(R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})", "unsupported tokenizer model: Unigram");
  expect_error(R"({"model": {"type": "WordPiece", "vocab": {}}})", "unsupported tokenizer model: WordPiece");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "missing from the vocab");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Bogus"}})",
               "unsupported pre_tokenizer type: Bogus");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split",
               "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false}})", "invalid regex");
  EXPECT_THROW(gale::Tokenizer::load("/nonexistent/dir"), gale::Error);
}

}  // namespace

namespace {

std::string run_cli(const std::string& args, int* rc) {
  std::string cmd = std::string(GALE_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *rc = WEXITSTATUS(pclose(p));
  return out;
}

TEST(TokenizerCli, TokenizeAndDetokenize) {
  const std::string dir = tok_dir() + "/mistral_spm";
  auto tok = gale::Tokenizer::load(dir);
  int rc = 0;
  std::string out = run_cli("tokenize -m " + dir + " --text 'Hello [INST] w\xC3\xB6rld' --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(json::parse(out)["ids"].get<std::vector<int32_t>>(), tok->encode("Hello [INST] w\xC3\xB6rld", true));
  out = run_cli("tokenize -m " + dir + " --text 'Hello' --no-special --json", &rc);
  EXPECT_EQ(json::parse(out)["ids"].get<std::vector<int32_t>>(), tok->encode("Hello", false));
  auto ids = tok->encode("Hello [INST] there", true);
  std::string list;
  for (size_t i = 0; i < ids.size(); ++i) list += (i ? "," : "") + std::to_string(ids[i]);
  out = run_cli("detokenize -m " + dir + " --ids " + list + " --json", &rc);
  EXPECT_EQ(json::parse(out)["text"], tok->decode(ids, false));
  out = run_cli("detokenize -m " + dir + " --ids " + list + " --skip-special --json", &rc);
  EXPECT_EQ(json::parse(out)["text"], tok->decode(ids, true));
  out = run_cli("detokenize -m " + dir + " --ids '' --json", &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(json::parse(out)["text"], "");
  // An id past the tokenizer's vocabulary (a padded embedding row) has no text, as in HF.
  const std::string past = std::to_string(tok->vocab_size());
  out = run_cli("detokenize -m " + dir + " --ids " + past + "," + list + "," + past + " --json", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(json::parse(out)["text"], tok->decode(ids, false));
  out = run_cli("detokenize -m " + dir + " --ids 1,x --json", &rc);
  EXPECT_EQ(rc, 1) << out;
  out = run_cli("tokenize -m /nonexistent --text hi", &rc);
  EXPECT_EQ(rc, 1) << out;
}

}  // namespace
