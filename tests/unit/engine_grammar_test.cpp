// Constrained decoding through the Engine with the bundled model (models/default): every output
// of a constrained request matches its constraint, checked by references that are not our
// matcher (std::regex, nlohmann's JSON parser plus the schema's rules written out by hand), with
// greedy and sampled requests batched together, speculation on, and a rollback in the middle.
#include <gtest/gtest.h>

#include <map>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/engine.h"
#include "model/model_loader.h"
#include "runtime/token_proposer.h"
#include "tokenizer/tokenizer.h"

using namespace gale;

namespace {

std::string bundled(const std::string& name) { return std::string(GALE_SOURCE_DIR) + "/models/" + name; }

const char* kSchema = R"({"type":"object","properties":{
  "name":{"type":"string","maxLength":12},
  "n":{"type":"integer"},
  "ok":{"type":"boolean"},
  "tags":{"type":"array","items":{"enum":["x","y"]},"maxItems":3}},
  "required":["name","n","ok"],"additionalProperties":false})";

void check_schema_output(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text);  // throws on invalid JSON
  ASSERT_TRUE(j.is_object()) << text;
  ASSERT_TRUE(j.contains("name") && j["name"].is_string()) << text;
  // maxLength counts code points.
  std::string nm = j["name"].get<std::string>();
  size_t cps = 0;
  for (unsigned char c : nm) cps += (c & 0xC0) != 0x80;
  EXPECT_LE(cps, 12u) << text;
  ASSERT_TRUE(j.contains("n") && j["n"].is_number_integer()) << text;
  ASSERT_TRUE(j.contains("ok") && j["ok"].is_boolean()) << text;
  for (auto it = j.begin(); it != j.end(); ++it)
    EXPECT_TRUE(it.key() == "name" || it.key() == "n" || it.key() == "ok" || it.key() == "tags") << text;
  if (j.contains("tags")) {
    ASSERT_TRUE(j["tags"].is_array()) << text;
    EXPECT_LE(j["tags"].size(), 3u);
    for (auto& t : j["tags"]) EXPECT_TRUE(t == "x" || t == "y") << text;
  }
}

struct Run {
  std::string text;
  std::string finish;
};

std::vector<Run> run_all(Engine& e, const std::vector<RequestParams>& reqs) {
  std::map<uint64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) index[e.add_request(reqs[i])] = i;
  std::vector<Run> out(reqs.size());
  int steps = 0;
  while (e.has_unfinished()) {
    for (RequestOutput& o : e.step()) {
      Run& r = out[index.at(o.id)];
      r.text += o.new_text;
      if (o.finished) r.finish = o.finish_reason;
      EXPECT_TRUE(o.error.empty()) << o.error;
    }
    EXPECT_LT(++steps, 100000);
  }
  return out;
}

std::vector<RequestParams> requests(const Tokenizer& tok) {
  std::vector<RequestParams> reqs;
  const char* prompts[] = {"Give me a JSON object:", "def f(x):\n    return", "The answer is"};
  for (int i = 0; i < 9; ++i) {
    RequestParams p;
    p.prompt = tok.encode(prompts[i % 3]);
    p.max_tokens = 400;
    p.eos_ids = {0};
    if (i % 2) {
      p.sampling.temperature = 1.2f;
      p.sampling.seed = uint64_t(i);
    }
    if (i < 3) p.constraint = {ConstraintSpec::Kind::JsonSchema, kSchema};
    else if (i < 6) p.constraint = {ConstraintSpec::Kind::Regex, "(yes|no|[0-9]{2,4}(\\.[0-9])?) [a-z]{1,5}!"};
    else p.constraint = {ConstraintSpec::Kind::Choice, R"(["alpha", "beta gamma", "ß€"])"};
    reqs.push_back(p);
  }
  return reqs;
}

void check(const std::vector<Run>& runs) {
  std::regex re("(yes|no|[0-9]{2,4}(\\.[0-9])?) [a-z]{1,5}!");
  for (size_t i = 0; i < runs.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i) + ": " + runs[i].text);
    EXPECT_EQ(runs[i].finish, "stop");
    if (i < 3) check_schema_output(runs[i].text);
    else if (i < 6) EXPECT_TRUE(std::regex_match(runs[i].text, re));
    else EXPECT_TRUE(runs[i].text == "alpha" || runs[i].text == "beta gamma" || runs[i].text == "ß€");
  }
}

TEST(EngineGrammar, OutputsMatchTheirConstraints) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  Engine e(*lm.model, tok.get());
  check(run_all(e, requests(*tok)));
}

TEST(EngineGrammar, SpeculationIsOffForConstrainedRequestsAndOutputsStayValid) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  EngineConfig ec;
  ec.num_speculative_tokens = 4;
  ec.speculative_adaptive = false;
  ec.proposer = make_ngram_proposer();
  Engine e(*lm.model, tok.get(), ec);
  auto reqs = requests(*tok);
  RequestParams free_req;  // an unconstrained one beside them still speculates
  free_req.prompt = tok->encode("a b a b a b a b a b a b");
  free_req.max_tokens = 16;
  free_req.ignore_eos = true;
  reqs.push_back(free_req);
  auto runs = run_all(e, reqs);
  runs.pop_back();
  check(runs);
}

TEST(EngineGrammar, RollbackRewindsTheMatcher) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  EngineConfig ec;
  ec.overlap = false;
  Engine e(*lm.model, nullptr, ec);  // no text streaming, so rollback is allowed
  RequestParams p = requests(*tok)[0];
  EXPECT_THROW(e.add_request(p), Error);  // a spec needs the tokenizer
  GrammarCompiler gc(std::make_shared<const TokenTable>(*tok, lm.model->config().vocab_size, std::vector<int32_t>{0}));
  p.grammar = gc.compile(p.constraint);
  uint64_t id = e.add_request(p);
  std::vector<int32_t> ids;
  std::string finish;
  bool rolled = false;
  while (e.has_unfinished()) {
    for (RequestOutput& o : e.step()) {
      ids.insert(ids.end(), o.new_ids.begin(), o.new_ids.end());
      if (o.finished) finish = o.finish_reason;
    }
    if (!rolled && ids.size() >= 6 && finish.empty()) {
      e.rollback(id, 4);
      ids.resize(ids.size() - 4);
      rolled = true;
    }
  }
  ASSERT_TRUE(rolled);
  EXPECT_EQ(finish, "stop");
  ASSERT_EQ(ids.back(), 0);
  ids.pop_back();
  check_schema_output(tok->decode(ids));
}

TEST(EngineGrammar, BadConstraintIsAClearError) {
  LoadedModel lm = load_model(bundled("default"), ActDType::F32);
  auto tok = Tokenizer::load(bundled("default"));
  Engine e(*lm.model, tok.get());
  RequestParams p;
  p.prompt = tok->encode("x");
  p.constraint = {ConstraintSpec::Kind::Regex, "a(b"};
  EXPECT_THROW(e.add_request(p), Error);
  p.constraint = {ConstraintSpec::Kind::JsonSchema, "{\"type\": \"object\", \"not\": {}}"};
  EXPECT_THROW(e.add_request(p), Error);
}

}  // namespace
