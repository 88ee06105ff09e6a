// The configuration file of `gale serve --config FILE` and `gale batch --config FILE` (what
// `gale tune` writes as gale.toml): a flat TOML subset whose keys are the commands' long flag
// names with '_' or '-' (kv_cache_dtype = "fp8" is --kv-cache-dtype fp8). Read here, applied to
// a command's flags by cli/config_options.h.
//
// Accepted: blank lines, '#' comments (alone or after a value), and one `key = value` per line:
// a bare key of letters, digits, '_' and '-'; a value that is a basic string ("..." with the
// escapes \" \\ \n \t \r), a literal string ('...'), an integer, a float, or true / false.
// Anything else (tables, arrays, inline tables, multi-line strings, dotted keys, a key twice) is an
// error naming the file and line, as TOML itself would refuse a repeated key.
#pragma once
#include <string>
#include <vector>

namespace gale {

struct ConfigEntry {
  std::string key;    // as written
  std::string value;  // strings unescaped; numbers and booleans as written
  bool is_string = false;
  bool is_bool = false;
  int line = 0;
};

// Throws gale::Error "WHERE:LINE: what is wrong" (WHERE names the file in messages).
std::vector<ConfigEntry> parse_toml_config(const std::string& text, const std::string& where);
// Reads and parses a file; throws gale::Error when it cannot be read.
std::vector<ConfigEntry> read_toml_config(const std::string& path);

// A TOML basic string holding s ("..." with the escapes above), for writers of such files.
std::string toml_quote(const std::string& s);

}  // namespace gale
