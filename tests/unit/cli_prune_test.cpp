// gale prune as users call it: one clear error and a non-zero exit for bad flags, a pruned
// checkpoint that `gale generate` loads, and the --eval report's JSON.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_runner.h"
#include "test_util.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Result = gale::test::CliResult;
Result gale(const std::string& args) { return gale::test::run_gale(args); }

std::string fixture(const std::string& name) { return gale::test::fixtures_dir() + "/models/" + name; }
fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("gale-cli-prune-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}
std::string calib_file() { return std::string(GALE_SOURCE_DIR) + "/models/data/validation-head.txt"; }

void expect_one_line_error(const Result& r, const std::string& what) {
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(CliPrune, BadFlagsAreOneClearError) {
  const fs::path out = temp_dir("bad");
  const std::string m = "prune -m " + fixture("llama-f32") + " --out " + out.string();
  expect_one_line_error(gale(m + " --method random --sparsity 0.5"), "--method must be");
  expect_one_line_error(gale(m + " --method magnitude --sparsity 1.5"), "--sparsity must be in [0, 1)");
  expect_one_line_error(gale(m + " --method magnitude"), "--sparsity is required");
  expect_one_line_error(gale(m + " --method wanda --sparsity 0.5"), "needs --calib");
  expect_one_line_error(gale(m + " --method ffn-channels --sparsity 0.25"), "needs --calib");
  expect_one_line_error(gale(m + " --method 2:4 --score wanda"), "needs --calib");
  expect_one_line_error(gale(m + " --method magnitude --sparsity 0.5 --calib " + calib_file()), "--calib applies to");
  expect_one_line_error(gale(m + " --method wanda --sparsity 0.5 --calib /nonexistent/calib.txt"), "cannot read --calib");
  EXPECT_FALSE(fs::exists(out));
}

TEST(CliPrune, PrunedCheckpointsGenerate) {
  for (const std::string method : {std::string("magnitude --sparsity 0.5"), std::string("2:4"), "ffn-channels --sparsity 0.25 --calib " + calib_file(),
                                   "heads --sparsity 0.5 --calib " + calib_file(), "layers --sparsity 0.5 --calib " + calib_file()}) {
    const fs::path out = temp_dir("gen");
    Result r = gale("prune -m " + fixture("llama-f32") + " --method " + method + " --out " + out.string() + " --json");
    ASSERT_EQ(r.code, 0) << method << ": " << r.err;
    const json j = json::parse(r.out);
    EXPECT_EQ(j["out"], out.string());
    r = gale("generate -m " + out.string() + " --ids 1,2,3,4 -n 8 --ignore-eos --json");
    ASSERT_EQ(r.code, 0) << method << ": " << r.err;
    EXPECT_EQ(json::parse(r.out)["ids"].size(), 8u) << method;
    fs::remove_all(out);
  }
}

// --eval: the report's figures, with the source compared against itself where nothing changed
// (ffn-channels at 0 %: KL 0, top-1 1, the same perplexity).
TEST(CliPrune, EvalReport) {
  const fs::path out = temp_dir("eval");
  Result r = gale("prune -m " + fixture("llama-f32") + " --method ffn-channels --sparsity 0 --calib " + calib_file() +
                  " --out " + out.string() + " --eval " + calib_file() + " --ctx 128 --reps 1 --gen 8 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["kl_divergence"].get<double>(), 0.0);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(j["perplexity"].get<double>(), j["reference_perplexity"].get<double>());
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["weight_bytes"], j["reference_weight_bytes"]);
  EXPECT_TRUE(fs::exists(out / "prune_report.json"));
  fs::remove_all(out);
}

}  // namespace
