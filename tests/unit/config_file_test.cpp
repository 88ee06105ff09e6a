// The TOML subset of --config files (api/config_file.h): what it accepts and how it refuses.
#include <gtest/gtest.h>

#include "api/config_file.h"
#include "core/error.h"

using gale::parse_toml_config;

TEST(ConfigFile, Values) {
  const auto e = parse_toml_config(
      "# gale tune's choice\n"
      "\n"
      "model = \"/m/a \\\"b\\\"\"   # trailing comment\n"
      "kv_cache_dtype='fp8'\n"
      "max_num_seqs = 1_024\r\n"
      "gpu-memory-utilization = 0.5\n"
      "no_prefix_cache = true\n",
      "f.toml");
  ASSERT_EQ(e.size(), 5u);
  EXPECT_EQ(e[0].key, "model");
  EXPECT_EQ(e[0].value, "/m/a \"b\"");
  EXPECT_TRUE(e[0].is_string);
  EXPECT_EQ(e[0].line, 3);
  EXPECT_EQ(e[1].value, "fp8");
  EXPECT_EQ(e[2].value, "1024");
  EXPECT_FALSE(e[2].is_string);
  EXPECT_EQ(e[3].key, "gpu-memory-utilization");
  EXPECT_EQ(e[3].value, "0.5");
  EXPECT_TRUE(e[4].is_bool);
  EXPECT_EQ(e[4].value, "true");
}

TEST(ConfigFile, Refusals) {
  auto error_of = [](const std::string& text) {
    try {
      parse_toml_config(text, "f.toml");
    } catch (const gale::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of("a = 1\n[serve]\n"), "f.toml:2: tables ([...]) are not supported: every key belongs at the top level");
  EXPECT_EQ(error_of("a = 1\na = 2\n"), "f.toml:2: the key 'a' is given twice");
  EXPECT_EQ(error_of("a = fp8\n"), "f.toml:1: the value of 'a' must be a quoted string, a number, true or false (got 'fp8')");
  EXPECT_EQ(error_of("a = \"fp8\n"), "f.toml:1: unterminated string in the value of 'a'");
  EXPECT_EQ(error_of("a =\n"), "f.toml:1: the key 'a' has no value");
  EXPECT_EQ(error_of("a = # none\n"), "f.toml:1: the key 'a' has no value");
  EXPECT_EQ(error_of("a = [1, 2]\n"), "f.toml:1: arrays and inline tables are not supported (the value of 'a')");
  EXPECT_EQ(error_of("a.b = 1\n"), "f.toml:1: dotted keys are not supported ('a.')");
  EXPECT_EQ(error_of("a 1\n"), "f.toml:1: expected '=' after the key 'a'");
  EXPECT_EQ(error_of("= 1\n"), "f.toml:1: expected a key (letters, digits, '_' and '-')");
  EXPECT_EQ(error_of("a = \"x\" y\n"), "f.toml:1: unexpected text after the value of 'a'");
  EXPECT_EQ(error_of("a = \"\\q\"\n"), "f.toml:1: unsupported escape '\\q' in the value of 'a'");
  EXPECT_EQ(error_of("a = 1.\n"), "f.toml:1: the value of 'a' must be a quoted string, a number, true or false (got '1.')");
  EXPECT_EQ(error_of("a = \"\"\"x\"\"\"\n"), "f.toml:1: multi-line strings are not supported");
  EXPECT_THROW(gale::read_toml_config("/nonexistent/gale.toml"), gale::Error);
}

TEST(ConfigFile, QuoteRoundTrips) {
  const std::string s = "a\"b\\c\nd\te";
  const auto e = parse_toml_config("k = " + gale::toml_quote(s) + "\n", "f");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].value, s);
}
