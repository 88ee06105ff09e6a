// Schema conformance (issue 22): generates random JSON schemas, samples one output per schema
// through the grammar engine's token mask with random logits over a real tokenizer's vocabulary,
// and writes {"schema", "output", "terminated"} lines for validate.mjs, which checks each output
// with ajv (an independent validator). Usage: schema_conformance MODEL_DIR COUNT SEED OUT.jsonl
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "grammar/grammar.h"
#include "tokenizer/tokenizer.h"

using nlohmann::ordered_json;
using namespace gale;

namespace {

class SchemaGen {
 public:
  explicit SchemaGen(uint64_t seed) : rng_(seed) {}

  ordered_json root() {
    defs_ = ordered_json::object();
    ordered_json s = gen(0);
    if (!defs_.empty()) {
      if (!s.is_object() || s.contains("$ref")) s = {{"allOf", ordered_json::array({s})}};
      s["$defs"] = defs_;
    }
    return s;
  }

 private:
  int pick(int n) { return int(rng_() % uint64_t(n)); }
  bool coin() { return pick(2) == 0; }

  std::string key() {
    static const char* names[] = {"id", "name", "a b", "é", "q\"x", "back\\slash", "count", "tags", "x", "emoji😀",
                                  "nested", "value", "flag", "k-1", "list"};
    return names[pick(15)];
  }
  ordered_json scalar_value() {
    switch (pick(6)) {
      case 0: return pick(1000) - 500;
      case 1: return "s\"" + std::to_string(pick(100)) + "\\\n€";
      case 2: return nullptr;
      case 3: return coin();
      case 4: return 2.5 * pick(10);
      default: return "plain";
    }
  }

  ordered_json string_schema() {
    ordered_json s = {{"type", "string"}};
    switch (pick(4)) {
      case 0: {
        static const char* patterns[] = {"^[a-z]{2,4}$", "^\\d{3}-\\d{4}$", "^(yes|no|maybe)$", "^[A-Z][a-z]{0,5}( [A-Z][a-z]{0,5})?$",
                                         "^\\w{1,3}\\.[a-f0-9]{2}$", "^[^a-z\"]{1,4}$"};
        s["pattern"] = patterns[pick(6)];
        break;
      }
      default: {
        int lo = pick(3), hi = lo + pick(8);
        if (lo > 0) s["minLength"] = lo;
        s["maxLength"] = hi;
      }
    }
    return s;
  }

  ordered_json gen(int depth) {
    int kind = pick(depth >= 3 ? 9 : 14);
    switch (kind) {
      case 0: case 1: return string_schema();
      case 2: return coin() ? ordered_json{{"type", "integer"}} : ordered_json{{"type", "integer"}, {"minimum", 0}};
      case 3: return {{"type", "number"}};
      case 4: return {{"type", "boolean"}};
      case 5: return {{"type", "null"}};
      case 6: {
        ordered_json e = ordered_json::array();
        int n = 1 + pick(4);
        for (int i = 0; i < n; ++i) e.push_back(scalar_value());
        return {{"enum", e}};
      }
      case 7: return {{"const", coin() ? scalar_value() : ordered_json{{"k", scalar_value()}, {"l", {1, "two"}}}}};
      case 8: {
        ordered_json s = string_schema();
        s["type"] = {"string", "null"};
        return s;
      }
      case 9: case 10: {  // object
        ordered_json props = ordered_json::object(), req = ordered_json::array();
        int n = 1 + pick(4);
        for (int i = 0; i < n; ++i) {
          std::string k = key();
          if (props.contains(k)) continue;
          props[k] = gen(depth + 1);
          if (pick(3) != 0) req.push_back(k);
        }
        ordered_json s = {{"type", "object"}, {"properties", props}};
        if (!req.empty()) s["required"] = req;
        s["additionalProperties"] = false;
        return s;
      }
      case 11: {  // array
        int lo = pick(3), hi = lo + pick(3);
        ordered_json s = {{"type", "array"}, {"items", gen(depth + 1)}, {"maxItems", hi}};
        if (lo > 0) s["minItems"] = lo;
        return s;
      }
      case 12: {  // anyOf / oneOf over disjoint kinds (oneOf's exclusivity is not enforced by the grammar)
        static const char* types[] = {"string", "boolean", "null", "integer"};
        int a = pick(4), b = (a + 1 + pick(3)) % 4;
        auto typed = [&](int t) {
          if (t == 0) return string_schema();
          return ordered_json{{"type", types[t]}};
        };
        return {{coin() ? "anyOf" : "oneOf", {typed(a), typed(b)}}};
      }
      default: {  // $ref to a definition
        std::string name = "d" + std::to_string(defs_.size());
        defs_[name] = nullptr;  // reserved before the definition's own definitions are made
        ordered_json def = gen(depth + 1);
        defs_[name] = def;
        return {{"$ref", "#/$defs/" + name}};
      }
    }
  }

  std::mt19937_64 rng_;
  ordered_json defs_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: schema_conformance MODEL_DIR COUNT SEED OUT.jsonl\n");
    return 2;
  }
  try {
    auto tok = Tokenizer::load(argv[1]);
    const int count = std::stoi(argv[2]);
    const uint64_t seed = std::stoull(argv[3]);
    std::ofstream out(argv[4]);
    const int32_t eos = int32_t(tok->vocab_size());  // an id of its own past the vocabulary
    auto table = std::make_shared<const TokenTable>(*tok, int64_t(tok->vocab_size()) + 1, std::vector<int32_t>{eos});
    GrammarCompiler compiler(table);
    SchemaGen gen(seed);
    std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
    std::normal_distribution<float> normal;
    std::vector<uint32_t> mask(mask_words(table->vocab));
    std::vector<float> logits(size_t(table->vocab));
    int terminated = 0;
    for (int i = 0; i < count; ++i) {
      ordered_json schema = gen.root();
      GrammarMatcher m(compiler.compile({ConstraintSpec::Kind::JsonSchema, schema.dump()}));
      std::string text;
      for (int step = 0; step < 2000 && !m.is_terminated(); ++step) {
        m.fill_mask(mask);
        // Random logits, masked, argmax: a uniform draw among the allowed tokens; eos, where
        // allowed, is favoured half the time so that outputs end.
        for (float& x : logits) x = normal(rng);
        if (mask[size_t(eos) / 32] >> (eos % 32) & 1u) logits[size_t(eos)] = rng() % 2 ? 1e9f : logits[size_t(eos)];
        apply_token_mask(logits, mask);
        int32_t best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (std::isinf(logits[size_t(best)])) throw Error("no token allowed after '" + text + "'");
        if (!m.accept_token(best)) throw Error("the mask allowed a token the matcher refused");
        if (best != eos) text += table->bytes[size_t(best)];
      }
      terminated += m.is_terminated();
      out << ordered_json{{"schema", schema}, {"output", text}, {"terminated", m.is_terminated()}}.dump(
                 -1, ' ', false, ordered_json::error_handler_t::replace)
          << "\n";
    }
    std::fprintf(stderr, "schema_conformance: %d schemas, %d outputs terminated\n", count, terminated);
    return terminated == count ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "schema_conformance: %s\n", e.what());
    return 1;
  }
}
