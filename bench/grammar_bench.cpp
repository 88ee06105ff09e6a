// Constrained decoding micro-benchmark (issue 22 targets): grammar compile time (GBNF from the
// schema and its parse) and the time of one token mask (GrammarMatcher::fill_mask) along outputs
// sampled through the mask, first output (cache cold) and later ones (cache warm) apart.
// Usage: grammar_bench TOKENIZER_DIR [SCHEMA.json] [OUTPUTS] [REPS]   (prints one JSON object)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "grammar/grammar.h"
#include "grammar/grammar_ir.h"
#include "tokenizer/tokenizer.h"

using namespace gale;
using clk = std::chrono::steady_clock;

namespace {

// A typical structured-output schema: an object of strings, numbers, an enum, an array of
// objects and an optional nested object.
const char* kDefaultSchema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0},
    "email": {"type": "string"},
    "score": {"type": "number"},
    "status": {"enum": ["active", "inactive", "pending"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 5},
    "address": {
      "type": "object",
      "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
      "required": ["city"]
    },
    "items": {"type": "array", "maxItems": 3, "items": {"type": "object",
      "properties": {"id": {"type": "integer"}, "qty": {"type": "integer"}, "note": {"type": ["string", "null"]}},
      "required": ["id", "qty"]}}
  },
  "required": ["name", "age", "status", "tags", "items"]
})";

double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: grammar_bench TOKENIZER_DIR [SCHEMA.json] [OUTPUTS] [REPS]\n");
    return 2;
  }
  std::string schema = kDefaultSchema;
  if (argc > 2 && std::string(argv[2]) != "-") {
    std::ifstream f(argv[2]);
    std::stringstream ss;
    ss << f.rdbuf();
    schema = ss.str();
  }
  const int outputs = argc > 3 ? std::atoi(argv[3]) : 8;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  auto tok = Tokenizer::load(argv[1]);
  const int64_t vocab = int64_t(tok->vocab_size());
  const int32_t eos = int32_t(vocab);  // an id of its own
  auto t0 = clk::now();
  auto table = std::make_shared<const TokenTable>(*tok, vocab + 1, std::vector<int32_t>{eos});
  const double table_ms = ms_since(t0);

  // Compile: a fresh compiler each rep (no cache): schema -> GBNF -> IR.
  std::vector<double> compile_ms;
  size_t positions = 0;
  for (int r = 0; r < reps; ++r) {
    GrammarCompiler gc(table);
    auto t = clk::now();
    auto g = gc.compile({ConstraintSpec::Kind::JsonSchema, schema});
    compile_ms.push_back(ms_since(t));
    positions = 0;
    for (const auto& e : g->grammar().elems) positions += e.kind == GElem::Bytes;
  }

  // Masks along sampled outputs (uniform among the allowed tokens, eos taken when allowed), all
  // through one compiled grammar as a server does for a repeated schema: the first output meets
  // every state for the first time (cold: each mask computed), later ones mostly hit the cache.
  GrammarCompiler gc(table);
  auto g = gc.compile({ConstraintSpec::Kind::JsonSchema, schema});
  std::mt19937_64 rng(1);
  std::vector<uint32_t> mask(mask_words(table->vocab));
  std::vector<double> cold, warm;
  int64_t tokens = 0, allowed_total = 0;
  for (int o = 0; o < outputs; ++o) {
    GrammarMatcher m(g);
    for (int step = 0; step < 1000 && !m.is_terminated(); ++step) {
      auto t = clk::now();
      m.fill_mask(mask);
      (o == 0 ? cold : warm).push_back(std::chrono::duration<double, std::micro>(clk::now() - t).count());
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < int32_t(table->vocab); ++id)
        if (mask[size_t(id) / 32] >> (id % 32) & 1u) allowed.push_back(id);
      allowed_total += int64_t(allowed.size());
      int32_t pick = std::find(allowed.begin(), allowed.end(), eos) != allowed.end() ? eos : allowed[rng() % allowed.size()];
      m.accept_token(pick);
      ++tokens;
    }
  }
  auto stats = [](std::vector<double> v) {
    if (v.empty()) return nlohmann::json::object();
    double mean = 0;
    for (double x : v) mean += x;
    mean /= double(v.size());
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) { return v[std::min(v.size() - 1, size_t(p * double(v.size())))]; };
    return nlohmann::json{{"tokens", v.size()}, {"mean", mean}, {"median", pct(0.5)}, {"p90", pct(0.9)},
                          {"p99", pct(0.99)}, {"max", v.back()}};
  };
  std::vector<double> all = cold;
  all.insert(all.end(), warm.begin(), warm.end());
  std::sort(compile_ms.begin(), compile_ms.end());
  nlohmann::json j = {
      {"vocab", vocab},
      {"token_table_ms", table_ms},
      {"grammar_positions", positions},
      {"compile_ms_median", compile_ms[compile_ms.size() / 2]},
      {"outputs", outputs},
      {"mask_us_first_output", stats(cold)},
      {"mask_us_later_outputs", stats(warm)},
      {"mask_us_all", stats(all)},
      {"cached_states", g->num_states()},
      {"allowed_tokens_mean", double(allowed_total) / double(tokens)},
  };
  std::printf("%s\n", j.dump(2).c_str());
  return 0;
}
