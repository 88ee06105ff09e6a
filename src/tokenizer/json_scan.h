// Fast path for the two big sections of tokenizer.json: model.vocab and model.merges.
//
// Why: a real tokenizer.json is 2-33 MB, almost all of it vocab (an object of 32k-262k
// "token": id pairs) and merges (100k-500k "a b" strings or ["a", "b"] pairs). Building an
// nlohmann::json tree for them took ~400-1200 ms on the 2-core dev machine; scanning them straight
// into the BPE model's tables is several times faster, and nlohmann parses only the small remainder.
//
// Everything here is conservative: any input it does not fully understand (syntax errors, odd
// numbers, invalid UTF-8, lone surrogates, duplicate keys) makes it return false, and the
// caller falls back to nlohmann::json, whose messages then describe the error. So the fast path
// changes speed, never results or error messages.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace gale::tok {

struct BpeSections {
  std::string_view vocab;   // text of the model.vocab value, or empty when not found
  std::string_view merges;  // text of the model.merges value, or empty
  std::string rest;         // the whole document with both values replaced by null
};

// Finds model.vocab / model.merges at the top level of `doc`. False when the document is not a
// plain object with at most one "model" holding at most one of each (the caller then parses
// `doc` whole).
bool split_bpe_sections(std::string_view doc, BpeSections& out);

// The scanners hand each entry to a callback instead of building strings: a view points into
// `text` when the JSON string has no escapes (nearly always), else into a buffer that the next
// entry reuses. Callbacks may already have run when a scanner returns false.

// {"token": id, ...} with ids non-negative integers, in file order. False on anything else.
bool scan_vocab(std::string_view text, const std::function<void(std::string_view token, int64_t id)>& on_entry);

// ["a b", ...] or [["a", "b"], ...] (strings split at the first space after the first byte,
// as HF does), in file order. False on anything else, including a string with no such space.
bool scan_merges(std::string_view text, const std::function<void(std::string_view a, std::string_view b)>& on_merge);

}  // namespace gale::tok
