// Constrained decoding from the command line: gale generate --json-schema / --regex / --grammar /
// --choice / --json-object and gale batch bodies with response_format / guided_*, on the bundled
// model; each output checked by a reference that is not our matcher (std::regex, nlohmann's
// parser and the schema's rules written out).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_runner.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Result = gale::test::CliResult;
Result gale(const std::string& args) { return gale::test::run_gale(args); }

std::string model() { return std::string(GALE_SOURCE_DIR) + "/models/default"; }

struct TmpDir {
  fs::path p = fs::temp_directory_path() / ("gale-cli-grammar-" + std::to_string(::getpid()));
  TmpDir() { fs::create_directories(p); }
  ~TmpDir() { fs::remove_all(p); }
};

void write(const fs::path& f, const std::string& s) { std::ofstream(f) << s; }

const char* kSchema = R"({"type":"object","properties":{"city":{"type":"string","maxLength":10},
  "pop":{"type":"integer","minimum":0},"big":{"type":"boolean"}},"required":["city","pop"]})";

void check_city(const std::string& text) {
  json j = json::parse(text);
  ASSERT_TRUE(j.is_object()) << text;
  ASSERT_TRUE(j["city"].is_string()) << text;
  ASSERT_TRUE(j["pop"].is_number_integer()) << text;
  EXPECT_GE(j["pop"].get<int64_t>(), 0) << text;
  if (j.contains("big")) EXPECT_TRUE(j["big"].is_boolean()) << text;
  for (auto it = j.begin(); it != j.end(); ++it) EXPECT_TRUE(it.key() == "city" || it.key() == "pop" || it.key() == "big");
}

TEST(CliGrammar, GenerateFlags) {
  TmpDir d;
  write(d.p / "s.json", kSchema);
  for (const char* temp : {"0", "1.5"}) {
    Result r = gale("generate -m " + model() + " -p 'City:' -n 300 --seed 5 --temperature " + temp +
                    " --json --json-schema " + (d.p / "s.json").string());
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["finish_reason"], "stop") << r.out;
    check_city(j["text"]);
  }
  // Sampled runs are seeded: the same draws in every run (an unseeded draw could run a grammar
  // with an unbounded repetition to -n and fail for no fault of the matcher).
  Result r = gale("generate -m " + model() + " -p 'x' -n 50 --temperature 1 --seed 3 --json --regex '[a-c]{2}-\\d{1,3}'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["finish_reason"], "stop") << r.out;
  EXPECT_TRUE(std::regex_match(json::parse(r.out)["text"].get<std::string>(), std::regex("[a-c]{2}-\\d{1,3}"))) << r.out;
  r = gale("generate -m " + model() + " -p 'x' -n 50 --temperature 1 --seed 3 --json --choice 'red,green,blue sky'");
  ASSERT_EQ(r.code, 0) << r.err;
  std::string t = json::parse(r.out)["text"];
  EXPECT_TRUE(t == "red" || t == "green" || t == "blue sky") << t;
  write(d.p / "g.gbnf", "root ::= \"(\" num (\"+\" num)* \")\"\nnum ::= [1-9] [0-9]?\n");
  r = gale("generate -m " + model() + " -p 'x' -n 50 --temperature 1 --seed 3 --json --grammar " + (d.p / "g.gbnf").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["finish_reason"], "stop") << r.out;
  EXPECT_TRUE(std::regex_match(json::parse(r.out)["text"].get<std::string>(), std::regex("\\([1-9][0-9]?(\\+[1-9][0-9]?)*\\)")))
      << r.out;
  // Errors: one clear line, exit 1.
  r = gale("generate -m " + model() + " -p 'x' --regex 'a(b'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("regex: missing ')'"), std::string::npos) << r.err;
  write(d.p / "bad.json", R"({"type":"object","if":{}})");
  r = gale("generate -m " + model() + " -p 'x' --json-schema " + (d.p / "bad.json").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("keyword 'if' is not supported"), std::string::npos) << r.err;
  r = gale("generate -m " + model() + " -p 'x' --regex a --choice b");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("at most one of"), std::string::npos) << r.err;
  r = gale("generate -m " + model() + " -p 'x' --json-schema /nonexistent.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("cannot read"), std::string::npos) << r.err;
}

TEST(CliGrammar, BatchBodies) {
  TmpDir d;
  json schema = json::parse(kSchema);
  std::vector<json> bodies = {
      {{"prompt", "City:"}, {"max_tokens", 300}, {"temperature", 1.0},
       {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "c"}, {"schema", schema}}}}}},
      {{"prompt", "Town:"}, {"max_tokens", 300}, {"guided_json", schema}},  // (the bundled model has no chat template)
      {{"prompt", "x"}, {"max_tokens", 20}, {"temperature", 1.0}, {"guided_choice", {"up", "down"}}},
      {{"prompt", "x"}, {"max_tokens", 20}, {"temperature", 1.0}, {"guided_regex", "[0-9]{3}"}},
      {{"prompt", "x"}, {"max_tokens", 20}, {"guided_regex", "(("}},
  };
  {
    std::ofstream f(d.p / "in.jsonl");
    for (size_t i = 0; i < bodies.size(); ++i) {
      bool chat = bodies[i].contains("messages");
      f << json{{"custom_id", "r" + std::to_string(i)}, {"method", "POST"},
                {"url", chat ? "/v1/chat/completions" : "/v1/completions"}, {"body", bodies[i]}}.dump()
        << "\n";
    }
  }
  Result r = gale("batch -m " + model() + " --input " + (d.p / "in.jsonl").string() + " --output " +
                  (d.p / "out.jsonl").string() + " --threads 1");
  std::ifstream f(d.p / "out.jsonl");
  std::map<std::string, json> res;
  for (std::string line; std::getline(f, line);) {
    json j = json::parse(line);
    res[j["custom_id"]] = j;
  }
  ASSERT_EQ(res.size(), bodies.size()) << r.err;
  for (auto& [k, v] : res) ASSERT_FALSE(k != "r4" && v["response"].is_null()) << v.dump();
  auto text = [&](const char* id) -> std::string {
    const json& b = res[id]["response"]["body"];
    const json& c = b["choices"][0];
    EXPECT_EQ(c["finish_reason"], "stop") << b;
    return c.contains("message") ? c["message"]["content"].get<std::string>() : c["text"].get<std::string>();
  };
  check_city(text("r0"));
  check_city(text("r1"));
  std::string c = text("r2");
  EXPECT_TRUE(c == "up" || c == "down") << c;
  EXPECT_TRUE(std::regex_match(text("r3"), std::regex("[0-9]{3}")));
  EXPECT_EQ(res["r4"]["error"]["code"], "invalid_request") << res["r4"];
  EXPECT_EQ(res["r4"]["error"]["message"], "'guided_regex': regex: missing ')' at offset 2") << res["r4"];
}

}  // namespace
