// Constrained decoding (issue 22): our own grammar engine.
//
// A constraint (JSON schema, json_object, regex, a choice of strings or GBNF text) compiles to a
// grammar: rules of alternatives of sequences over byte sets and rule references (grammar_ir.h),
// matched byte by byte by a pushdown automaton (a set of stacks of rule positions). A
// GrammarCompiler holds one tokenizer's vocabulary (each token's bytes, sorted so that shared
// prefixes are walked once) and a cache of compiled grammars; a CompiledGrammar is immutable and
// shared by every request that uses it (thread-safe), and a GrammarMatcher is one request's state.
// The token mask: the vocabulary is walked in byte order (a trie without the nodes: each token
// shares the matcher states of its common prefix with the one before, so shared prefixes are
// walked once and a dead prefix skips every token under it), and the result is cached per
// matcher state in the compiled grammar, so a schema served many times computes each state's
// mask once. ARCHITECTURE.md, "Constrained decoding", says why not XGrammar's split by rule.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace gale {

class Tokenizer;

// What a request asks its output to match. text: the schema's JSON text (json_schema), the
// regex, the GBNF text, or for choice a JSON array of strings; empty for json_object.
struct ConstraintSpec {
  enum class Kind { None, JsonSchema, JsonObject, Regex, Choice, Grammar };
  Kind kind = Kind::None;
  std::string text;
  bool active() const { return kind != Kind::None; }
};
const char* constraint_kind_name(ConstraintSpec::Kind k);

// Front ends to GBNF text (llama.cpp's syntax). Throw gale::Error naming what is unsupported or
// malformed.
std::string json_schema_to_gbnf(const nlohmann::json& schema);
std::string json_object_gbnf();                      // any JSON object (response_format json_object)
std::string regex_to_gbnf(const std::string& regex);  // the common subset; anchored at both ends
std::string choice_to_gbnf(const std::vector<std::string>& choices);
std::string constraint_to_gbnf(const ConstraintSpec& spec);

struct Grammar;  // grammar_ir.h
// Parses GBNF text (root rule `root`); throws gale::Error with the line of the problem.
std::shared_ptr<const Grammar> parse_gbnf(const std::string& text);

// One tokenizer's vocabulary as the matcher sees it: each id's bytes (byte-level BPE through the
// byte decoder; SentencePiece's ▁ as a space and <0xNN> as the byte), special ids never allowed,
// and the ids sorted by bytes for the prefix walk.
struct TokenTable {
  int64_t vocab = 0;                  // mask length in tokens (the logits row, >= tokenizer's)
  std::vector<std::string> bytes;     // [vocab]; empty for special ids, holes and padding
  std::vector<int32_t> sorted;        // ids with non-empty bytes, ascending by bytes
  std::vector<int32_t> eos;           // ids allowed (only) where the grammar accepts
  // The sorted tokens' bytes back to back (a walk reads them in order), where each starts, and
  // how many leading bytes each shares with the one before.
  std::string sorted_bytes;
  std::vector<uint32_t> sorted_off;   // [sorted + 1]
  std::vector<uint32_t> sorted_lcp;   // [sorted]
  TokenTable(const Tokenizer& tok, int64_t vocab, std::vector<int32_t> eos_ids);
  // For tests and benchmarks without a tokenizer.
  TokenTable(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids);
  void finish();  // sorts
};

class CompiledGrammar;
class GrammarMatcher;

// Compiles constraints against one vocabulary and caches the results by (kind, text): the same
// schema in many requests is compiled once and its mask cache shared. Thread-safe.
class GrammarCompiler {
 public:
  explicit GrammarCompiler(std::shared_ptr<const TokenTable> tokens);
  std::shared_ptr<const CompiledGrammar> compile(const ConstraintSpec& spec);
  std::shared_ptr<const CompiledGrammar> compile_gbnf(const std::string& gbnf);
  const TokenTable& tokens() const { return *tokens_; }

 private:
  std::shared_ptr<const TokenTable> tokens_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const CompiledGrammar>> cache_;
};

// A grammar bound to a vocabulary, with its mask cache: the allowed tokens of each matcher state
// met so far (a state: the set of stacks, written as the grammar positions of each stack from
// top to bottom), shared by every matcher of the grammar. Thread-safe.
class CompiledGrammar {
 public:
  CompiledGrammar(std::shared_ptr<const Grammar> g, std::shared_ptr<const TokenTable> tokens);
  ~CompiledGrammar();
  const Grammar& grammar() const { return *g_; }
  const TokenTable& tokens() const { return *tokens_; }
  // The allowed tokens of a state: a bitset over the vocabulary when many are allowed, else the
  // ids ascending (eos not included: it depends only on whether the state accepts).
  struct StateMask {
    std::vector<uint32_t> bits;
    std::vector<int32_t> ids;
  };
  // Null when the state has not been met (or the cache is full).
  std::shared_ptr<const StateMask> find_state(const std::vector<int32_t>& key) const;
  void add_state(const std::vector<int32_t>& key, std::shared_ptr<const StateMask> m) const;
  size_t num_states() const;
  static constexpr size_t kMaxStates = 8192;

 private:
  struct Cache;
  std::shared_ptr<const Grammar> g_;
  std::shared_ptr<const TokenTable> tokens_;
  std::unique_ptr<Cache> cache_;
};

// Words of a mask over n tokens (bit id % 32 of word id / 32 set = allowed).
inline size_t mask_words(int64_t n) { return size_t((n + 31) / 32); }

// One request's position in a grammar. Not thread-safe (one per request).
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const CompiledGrammar> g);
  ~GrammarMatcher();
  GrammarMatcher(GrammarMatcher&&) noexcept;
  // Sets mask (mask_words(vocab) words) to the tokens allowed next: those whose bytes continue
  // the grammar, and the eos ids where the grammar may end here. After termination only eos.
  void fill_mask(std::span<uint32_t> mask);
  // Advances by one token; false (state unchanged) when the token is not allowed. An eos id
  // where the grammar accepts terminates the matcher.
  bool accept_token(int32_t id);
  // Advances by raw bytes (tests); false (state unchanged) when they do not continue the grammar.
  bool accept_bytes(std::string_view bytes);
  bool can_terminate() const;  // the grammar accepts what has been matched
  bool is_terminated() const;  // an eos was accepted
  // Undoes the last n accepted tokens (speculative decoding, engine rollback); n <= tokens
  // accepted and still held (the last kMaxRollback).
  void rollback(int n);
  int64_t num_accepted() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Sets logits[id] = -inf for every id whose mask bit is clear (ids past the mask too).
void apply_token_mask(std::span<float> logits, std::span<const uint32_t> mask);

}  // namespace gale
