// Nesting limits for the JSON Gale reads (config.json, safetensors headers, tokenizer.json,
// tokenizer_config.json). nlohmann's parser is iterative, but what walks the tree afterwards
// (dump(), the tokenizer's Sequence builders, a chat template's message values) recurses once
// per level: a 200 KB file of 100k nested brackets would overflow the stack (issue 15). Real
// files nest fewer than 10 levels, so documents past kMaxJsonDepth are refused before parsing.
#pragma once
#include <string>
#include <string_view>

namespace gale {

constexpr int kMaxJsonDepth = 128;

// Deepest nesting of arrays and objects in `text` (brackets inside strings do not count); stops
// counting, and returns, as soon as it passes `limit`. Syntax is left to the JSON parser.
int json_nesting_depth(std::string_view text, int limit = kMaxJsonDepth);

// Throws gale::Error "`what` nests deeper than N levels ..." when the text passes the limit.
void check_json_depth(std::string_view text, const std::string& what, int limit = kMaxJsonDepth);

}  // namespace gale
