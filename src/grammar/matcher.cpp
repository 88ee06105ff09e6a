// The pushdown matcher, the per-position mask cache and the token mask.
//
// A stack is a chain of nodes (pos, parent) in an arena: pos is the next element to match in
// some alternative, parent the node to go on with once that alternative ends (-1: the bottom).
// Stacks share their lower parts, and a rule reference that ends its alternative passes its
// parent on instead of pushing (so right recursion, the IR's repetition, does not grow stacks).
// The matcher's state is the set of stack tops, each expanded until its element is a byte set
// (kAccept stands for an empty stack: the grammar may end there). Advancing by a byte keeps the
// tops whose set holds it, each moved one element on and expanded again.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "grammar/grammar.h"
#include "grammar/grammar_ir.h"
#include "tokenizer/tokenizer.h"

namespace gale {

namespace {

constexpr int32_t kAccept = -1;
// More live stacks than this means a grammar ambiguous beyond use; the matcher refuses the byte.
constexpr size_t kMaxStacks = 20000;

struct Node {
  int32_t pos;
  int32_t parent;
};

class Stacks {
 public:
  explicit Stacks(const Grammar& g) : g_(g) {}
  std::vector<Node> nodes;
  // While set (mask walks), equal (pos, parent) nodes are one node, so equal states have equal
  // ids and the walk can remember transitions between them.
  std::unordered_map<uint64_t, int32_t>* intern = nullptr;

  int32_t add(int32_t pos, int32_t parent) {
    if (intern) {
      uint64_t k = (uint64_t(uint32_t(pos)) << 32) | uint32_t(parent);
      auto [it, fresh] = intern->try_emplace(k, int32_t(nodes.size()));
      if (!fresh) return it->second;
    }
    nodes.push_back(Node{pos, parent});
    return int32_t(nodes.size() - 1);
  }
  void expand_at(int32_t pos, int32_t parent, std::vector<int32_t>& out) {
    const GElem& e = g_.elems[size_t(pos)];
    if (e.kind == GElem::Bytes) {
      out.push_back(add(pos, parent));
    } else if (e.kind == GElem::Rule) {
      expand_rule(pos, parent, out);
    } else if (parent < 0) {
      out.push_back(kAccept);
    } else {
      expand_node(parent, out);
    }
  }
  void expand_node(int32_t id, std::vector<int32_t>& out) {
    Node n = nodes[size_t(id)];
    if (g_.elems[size_t(n.pos)].kind == GElem::Bytes) {
      out.push_back(id);
    } else {
      expand_rule(n.pos, n.parent, out);
    }
  }
  void expand_rule(int32_t pos, int32_t parent, std::vector<int32_t>& out) {
    const GElem& e = g_.elems[size_t(pos)];
    int32_t next = pos + 1;
    int32_t cont = g_.elems[size_t(next)].kind == GElem::End ? parent : add(next, parent);
    for (int32_t s : g_.alts[e.arg]) expand_at(s, cont, out);
  }
  // out = the tops after byte b from tops in (deduplicated); in's kAccept is dropped.
  void advance(const std::vector<int32_t>& in, uint8_t b, std::vector<int32_t>& out) {
    out.clear();
    for (int32_t id : in) {
      if (id == kAccept) continue;
      Node n = nodes[size_t(id)];
      if (!g_.sets[g_.elems[size_t(n.pos)].arg][b]) continue;
      expand_at(n.pos + 1, n.parent, out);
    }
    if (out.size() > 1) dedup(out);
    if (out.size() > kMaxStacks) out.clear();
  }
  void dedup(std::vector<int32_t>& v) {
    auto key = [&](int32_t id) -> uint64_t {
      if (id == kAccept) return ~uint64_t(0);
      const Node& n = nodes[size_t(id)];
      return (uint64_t(uint32_t(n.pos)) << 32) | uint32_t(n.parent);
    };
    std::sort(v.begin(), v.end(), [&](int32_t a, int32_t b) { return key(a) < key(b); });
    v.erase(std::unique(v.begin(), v.end(), [&](int32_t a, int32_t b) { return key(a) == key(b); }), v.end());
  }

 private:
  const Grammar& g_;
};

bool has_accept(const std::vector<int32_t>& v) { return std::find(v.begin(), v.end(), kAccept) != v.end(); }

}  // namespace

const char* constraint_kind_name(ConstraintSpec::Kind k) {
  switch (k) {
    case ConstraintSpec::Kind::None: return "none";
    case ConstraintSpec::Kind::JsonSchema: return "json_schema";
    case ConstraintSpec::Kind::JsonObject: return "json_object";
    case ConstraintSpec::Kind::Regex: return "regex";
    case ConstraintSpec::Kind::Choice: return "choice";
    case ConstraintSpec::Kind::Grammar: return "grammar";
  }
  return "?";
}

// ---- vocabulary ----

TokenTable::TokenTable(const Tokenizer& tok, int64_t n, std::vector<int32_t> eos_ids) : vocab(n), eos(std::move(eos_ids)) {
  bytes.resize(size_t(n));
  int64_t tv = std::min<int64_t>(n, int64_t(tok.vocab_size()));
  for (int64_t id = 0; id < tv; ++id) {
    if (tok.is_special(int32_t(id))) continue;
    bytes[size_t(id)] = tok.token_bytes(int32_t(id));
  }
  for (int32_t e : eos)
    if (e >= 0 && e < n) bytes[size_t(e)].clear();
  finish();
}

TokenTable::TokenTable(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids)
    : vocab(int64_t(token_bytes.size())), bytes(std::move(token_bytes)), eos(std::move(eos_ids)) {
  for (int32_t e : eos)
    if (e >= 0 && e < vocab) bytes[size_t(e)].clear();
  finish();
}

void TokenTable::finish() {
  sorted.clear();
  for (size_t id = 0; id < bytes.size(); ++id)
    if (!bytes[id].empty()) sorted.push_back(int32_t(id));
  std::sort(sorted.begin(), sorted.end(), [&](int32_t a, int32_t b) { return bytes[size_t(a)] < bytes[size_t(b)]; });
  sorted_bytes.clear();
  sorted_off.assign(1, 0);
  sorted_lcp.clear();
  std::string_view prev;
  for (int32_t id : sorted) {
    const std::string& b = bytes[size_t(id)];
    size_t l = 0, m = std::min(prev.size(), b.size());
    while (l < m && prev[l] == b[l]) ++l;
    sorted_lcp.push_back(uint32_t(l));
    sorted_bytes += b;
    sorted_off.push_back(uint32_t(sorted_bytes.size()));
    prev = b;
  }
}

// ---- mask cache ----

namespace {

struct KeyHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    uint64_t h = 1469598103934665603ull;
    for (int32_t x : v) h = (h ^ uint32_t(x)) * 1099511628211ull;
    return size_t(h);
  }
};

}  // namespace

struct CompiledGrammar::Cache {
  mutable std::mutex mu;
  std::unordered_map<std::vector<int32_t>, std::shared_ptr<const StateMask>, KeyHash> states;
};

CompiledGrammar::CompiledGrammar(std::shared_ptr<const Grammar> g, std::shared_ptr<const TokenTable> tokens)
    : g_(std::move(g)), tokens_(std::move(tokens)), cache_(std::make_unique<Cache>()) {}

CompiledGrammar::~CompiledGrammar() = default;

std::shared_ptr<const CompiledGrammar::StateMask> CompiledGrammar::find_state(const std::vector<int32_t>& key) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  auto it = cache_->states.find(key);
  return it == cache_->states.end() ? nullptr : it->second;
}

void CompiledGrammar::add_state(const std::vector<int32_t>& key, std::shared_ptr<const StateMask> m) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->states.size() < kMaxStates) cache_->states.emplace(key, std::move(m));
}

size_t CompiledGrammar::num_states() const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  return cache_->states.size();
}

// ---- compiler ----

GrammarCompiler::GrammarCompiler(std::shared_ptr<const TokenTable> tokens) : tokens_(std::move(tokens)) {}

std::shared_ptr<const CompiledGrammar> GrammarCompiler::compile(const ConstraintSpec& spec) {
  if (!spec.active()) throw Error("grammar: no constraint to compile");
  std::string key = std::string(constraint_kind_name(spec.kind)) + '\n' + spec.text;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  auto g = std::make_shared<const CompiledGrammar>(parse_gbnf(constraint_to_gbnf(spec)), tokens_);
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= 256) cache_.clear();  // a bound, not an LRU: schemas repeat in practice
  return cache_.emplace(key, g).first->second;
}

std::shared_ptr<const CompiledGrammar> GrammarCompiler::compile_gbnf(const std::string& gbnf) {
  return compile(ConstraintSpec{ConstraintSpec::Kind::Grammar, gbnf});
}

// ---- matcher ----

struct GrammarMatcher::State {
  std::shared_ptr<const CompiledGrammar> cg;
  Stacks st;
  std::vector<int32_t> tops, next, scratch_a, scratch_b;
  struct Saved {
    size_t arena;
    std::vector<int32_t> tops;
    bool terminated;
  };
  std::vector<Saved> history;  // before each accepted token
  bool terminated = false;
  // Every node is hash-consed (Stacks::intern), so that equal stacks are one stack here as in the
  // mask walks: the matcher and its masks then agree even where a grammar is ambiguous enough
  // to reach kMaxStacks.
  std::unordered_map<uint64_t, int32_t> node_ids;
  explicit State(std::shared_ptr<const CompiledGrammar> g) : cg(std::move(g)), st(cg->grammar()) {
    st.intern = &node_ids;
  }
  // Drops the nodes from n on (and their hash-consing entries).
  void truncate(size_t n) {
    for (size_t id = n; id < st.nodes.size(); ++id) {
      const Node& nd = st.nodes[id];
      node_ids.erase((uint64_t(uint32_t(nd.pos)) << 32) | uint32_t(nd.parent));
    }
    st.nodes.resize(n);
  }

  bool is_eos(int32_t id) const {
    const auto& e = cg->tokens().eos;
    return std::find(e.begin(), e.end(), id) != e.end();
  }
  // Advances tops by bytes into tops (true), or leaves everything as it was (false).
  bool advance_bytes(std::string_view bytes) {
    size_t mark = st.nodes.size();
    scratch_a = tops;
    for (char c : bytes) {
      st.advance(scratch_a, uint8_t(c), scratch_b);
      if (scratch_b.empty()) {
        truncate(mark);
        return false;
      }
      std::swap(scratch_a, scratch_b);
    }
    tops = scratch_a;
    return true;
  }
  // The state's cache key: each stack's positions from top to bottom, -2 after each, -1 for
  // the empty (accepting) stack.
  void state_key(std::vector<int32_t>& key) const {
    key.clear();
    for (int32_t top : tops) {
      for (int32_t id = top; id >= 0; id = st.nodes[size_t(id)].parent) key.push_back(st.nodes[size_t(id)].pos);
      if (top == kAccept) key.push_back(-1);
      key.push_back(-2);
    }
  }
  // The tokens whose bytes continue the current state: the vocabulary in byte order, each token
  // starting from the state its common prefix with the previous token reached, and every token
  // under a prefix that died skipped. States are interned (their nodes hash-consed) and their
  // transitions remembered, a DFA built lazily for this walk: a string's loop is expanded once,
  // then each byte is a look-up. The arena is left as it was.
  std::shared_ptr<const CompiledGrammar::StateMask> compute_mask() {
    const TokenTable& t = cg->tokens();
    const size_t mark = st.nodes.size();
    std::unordered_map<std::vector<int32_t>, int32_t, KeyHash> set_ids;
    std::vector<std::vector<int32_t>> sets;
    std::vector<int32_t> trans;  // [sets * 256]: set * 256 + byte -> set; -1 dead, -2 not known yet
    auto intern_set = [&](std::vector<int32_t>& v) {
      auto [it, fresh] = set_ids.try_emplace(v, int32_t(sets.size()));
      if (fresh) {
        sets.push_back(v);
        trans.resize(trans.size() + 256, -2);
      }
      return it->second;
    };
    std::vector<int32_t> start = tops, next;
    std::vector<int32_t> lv(1, intern_set(start));
    size_t valid = 0, dead = 0;
    std::vector<int32_t> accepted;
    const char* all = t.sorted_bytes.data();
    for (size_t i = 0; i < t.sorted.size(); ++i) {
      const int32_t id = t.sorted[i];
      std::string_view b(all + t.sorted_off[i], t.sorted_off[i + 1] - t.sorted_off[i]);
      // Its common prefix with the token before is its common prefix with the last one walked
      // too (sorted order), unless both lie under the dead prefix.
      size_t l = t.sorted_lcp[i];
      if (dead > 0 && l >= dead) continue;  // under a dead prefix
      dead = 0;
      if (lv.size() < b.size() + 1) lv.resize(b.size() + 1);
      for (size_t k = std::min(l, valid); k < b.size(); ++k) {
        const size_t key = size_t(lv[k]) * 256 + uint8_t(b[k]);
        int32_t nx = trans[key];
        if (nx == -2) {
          st.advance(sets[size_t(lv[k])], uint8_t(b[k]), next);
          nx = next.empty() ? -1 : intern_set(next);
          trans[key] = nx;
        }
        lv[k + 1] = nx;
        valid = k + 1;
        if (nx < 0) {
          dead = k + 1;
          break;
        }
      }
      if (dead == 0) accepted.push_back(id);
    }
    truncate(mark);
    auto sm = std::make_shared<CompiledGrammar::StateMask>();
    if (int64_t(accepted.size()) * 32 > t.vocab) {
      sm->bits.assign(mask_words(t.vocab), 0);
      for (int32_t id : accepted) sm->bits[size_t(id) / 32] |= 1u << (id % 32);
    } else {
      std::sort(accepted.begin(), accepted.end());
      sm->ids = std::move(accepted);
    }
    return sm;
  }
  std::vector<int32_t> key;
};

GrammarMatcher::GrammarMatcher(std::shared_ptr<const CompiledGrammar> g) : s_(std::make_unique<State>(std::move(g))) {
  const Grammar& gr = s_->cg->grammar();
  for (int32_t a : gr.alts[size_t(gr.root)]) s_->st.expand_at(a, -1, s_->tops);
  if (s_->tops.size() > 1) s_->st.dedup(s_->tops);
}

GrammarMatcher::~GrammarMatcher() = default;
GrammarMatcher::GrammarMatcher(GrammarMatcher&&) noexcept = default;

void GrammarMatcher::fill_mask(std::span<uint32_t> mask) {
  std::fill(mask.begin(), mask.end(), 0u);
  const TokenTable& t = s_->cg->tokens();
  auto set = [&](int32_t id) {
    if (size_t(id) / 32 < mask.size()) mask[size_t(id) / 32] |= 1u << (id % 32);
  };
  if (!s_->terminated) {
    s_->state_key(s_->key);
    std::shared_ptr<const CompiledGrammar::StateMask> sm = s_->cg->find_state(s_->key);
    if (!sm) {
      sm = s_->compute_mask();
      s_->cg->add_state(s_->key, sm);
    }
    if (!sm->bits.empty()) {
      std::copy_n(sm->bits.begin(), std::min(mask.size(), sm->bits.size()), mask.begin());
    } else {
      for (int32_t id : sm->ids) set(id);
    }
  }
  if (s_->terminated || has_accept(s_->tops))
    for (int32_t e : t.eos) set(e);
}

bool GrammarMatcher::accept_token(int32_t id) {
  if (s_->terminated) return false;
  const TokenTable& t = s_->cg->tokens();
  State::Saved saved{s_->st.nodes.size(), s_->tops, false};
  if (s_->is_eos(id)) {
    if (!can_terminate()) return false;
    s_->history.push_back(std::move(saved));
    s_->terminated = true;
    return true;
  }
  if (id < 0 || id >= t.vocab || t.bytes[size_t(id)].empty()) return false;
  if (!s_->advance_bytes(t.bytes[size_t(id)])) return false;
  s_->history.push_back(std::move(saved));
  return true;
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  if (s_->terminated) return false;
  return s_->advance_bytes(bytes);
}

bool GrammarMatcher::can_terminate() const { return !s_->terminated && has_accept(s_->tops); }
bool GrammarMatcher::is_terminated() const { return s_->terminated; }
int64_t GrammarMatcher::num_accepted() const { return int64_t(s_->history.size()); }

void GrammarMatcher::rollback(int n) {
  if (n < 0 || size_t(n) > s_->history.size())
    throw Error("grammar: cannot roll back " + std::to_string(n) + " tokens of " + std::to_string(s_->history.size()));
  if (n == 0) return;
  State::Saved& sv = s_->history[s_->history.size() - size_t(n)];
  s_->truncate(sv.arena);
  s_->tops = std::move(sv.tops);
  s_->terminated = sv.terminated;
  s_->history.resize(s_->history.size() - size_t(n));
}

void apply_token_mask(std::span<float> logits, std::span<const uint32_t> mask) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    size_t w = i / 32;
    if (w >= mask.size() || !(mask[w] >> (i % 32) & 1u)) logits[i] = ninf;
  }
}

}  // namespace gale
