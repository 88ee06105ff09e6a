// gale tune as users call it, on the bundled model with a tiny budget: the files it writes, a
// choice that no measured point dominates, resume that keeps finished points, and gale.toml read
// back by `gale serve --config` and `gale batch --config` (the command line winning over the file).
#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_runner.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Result = gale::test::CliResult;
Result run(const std::string& args) { return gale::test::run_gale(args); }

const std::string kModel = std::string(GALE_SOURCE_DIR) + "/models/default";

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("gale-cli-tune-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty()) out.push_back(l);
  return out;
}

// A tiny sweep: 4 short requests, 256 scored tokens, one run per point.
std::string tiny_tune(const fs::path& out, int max_points) {
  return "tune -m " + kModel + " --out " + out.string() + " --max-points " + std::to_string(max_points) +
         " --requests 4 --gen 8 --eval-tokens 256 --ctx 128 --reps 1 --json";
}

// Dominance written out here, apart from the code under test: no worse in all of quality loss,
// throughput, p95 latency and memory, better in one.
bool dominates(const json& a, const json& b) {
  const double la = a["quality_loss_pct"], lb = b["quality_loss_pct"];
  const double ta = a["output_tokens_per_s"], tb = b["output_tokens_per_s"];
  const double pa = a["latency_p95_ms"], pb = b["latency_p95_ms"];
  const double ma = a["memory_bytes"], mb = b["memory_bytes"];
  const bool no_worse = la <= lb && ta >= tb && pa <= pb && ma <= mb;
  return no_worse && (la < lb || ta > tb || pa < pb || ma < mb);
}

// Starts `gale serve ARGS` and returns its stderr up to the "listening" banner (or up to its exit,
// when it fails), then stops it.
std::string serve_banner(const std::string& args) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  const std::string cmd = "exec " + std::string(GALE_BINARY) + " serve " + args;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::FILE* f = ::fdopen(fds[0], "r");
  std::string all;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    all += line;
    if (std::strstr(line, "listening on")) break;
  }
  ::kill(pid, SIGTERM);
  std::fclose(f);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return all;
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

}  // namespace

TEST(CliTune, TinySweepWritesAChoiceOnTheFrontAndResumes) {
  const fs::path out = temp_dir("sweep");
  Result r = run(tiny_tune(out, 2));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"pareto.json", "report.html", "gale.toml", "points.jsonl"}) EXPECT_TRUE(fs::exists(out / f)) << f;
  json j = json::parse(r.out);
  EXPECT_EQ(json::parse(read(out / "pareto.json")), j);  // --json prints what pareto.json holds
  EXPECT_EQ(j["measured_now"], 2);
  EXPECT_EQ(j["reused"], 0);
  EXPECT_EQ(j["stopped_by_max_points"], true);
  ASSERT_EQ(j["points"].size(), 2u);
  // The first point is the unmodified model: its loss is zero by definition.
  EXPECT_EQ(j["points"][0]["config"]["quantization"], "none");
  EXPECT_EQ(j["points"][0]["quality_loss_pct"], 0.0);
  EXPECT_EQ(j["points"][1]["config"]["quantization"], "fp8");
  EXPECT_GT(double(j["points"][1]["kl_divergence"]), 0.0);  // fp8 weights do change the logits

  // Progress while it runs.
  EXPECT_NE(r.err.find("measuring"), std::string::npos) << r.err;

  // The chosen point: within the quality limit, dominated by no measured point.
  int chosen = -1;
  for (size_t i = 0; i < j["points"].size(); ++i)
    if (j["points"][i]["chosen"] == true) chosen = int(i);
  ASSERT_GE(chosen, 0);
  EXPECT_EQ(j["chosen"], j["points"][chosen]["key"]);
  EXPECT_LE(double(j["points"][chosen]["quality_loss_pct"]), 5.0);
  for (const json& p : j["points"]) EXPECT_FALSE(dominates(p, j["points"][chosen])) << p["key"];

  // The report: a self-contained page with the plot inline.
  const std::string html = read(out / "report.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);

  // Resume: the two points are kept as they were (timings would differ if measured again), one more measured.
  const std::vector<std::string> before = lines(read(out / "points.jsonl"));
  ASSERT_EQ(before.size(), 2u);
  r = run(tiny_tune(out, 3));
  ASSERT_EQ(r.code, 0) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j["reused"], 2);
  EXPECT_EQ(j["measured_now"], 1);
  EXPECT_NE(r.err.find("measured before, kept"), std::string::npos) << r.err;
  const std::vector<std::string> after = lines(read(out / "points.jsonl"));
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(after[0], before[0]);
  EXPECT_EQ(after[1], before[1]);
  EXPECT_EQ(json::parse(after[2])["config"]["quantization"], "int8");
  EXPECT_FALSE(fs::exists(out / "points.jsonl.tmp"));

  // Other settings (another workload) do not reuse the points.
  r = run("tune -m " + kModel + " --out " + out.string() +
           " --max-points 1 --requests 3 --gen 8 --eval-tokens 256 --ctx 128 --reps 1 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["reused"], 0);

  // gale.toml from a tune goes into serve and batch as it is.
  const fs::path toml = out / "gale.toml";
  write(out / "in.jsonl",
        R"({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "def f(x):", "max_tokens": 4}})"
        "\n");
  r = run("batch --config " + toml.string() + " --input " + (out / "in.jsonl").string() + " --output " +
           (out / "results.jsonl").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<std::string> results = lines(read(out / "results.jsonl"));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(json::parse(results[0])["response"]["status_code"], 200);
  const std::string banner = serve_banner("--config " + toml.string() + " --port 0");
  EXPECT_NE(banner.find("listening on"), std::string::npos) << banner;
  fs::remove_all(out);
}

TEST(CliTune, ConfigFileKeysAndTheCommandLineWins) {
  const fs::path dir = temp_dir("config");
  fs::create_directories(dir);
  write(dir / "bf16.toml", "model = \"" + kModel + "\"\nkv_cache_dtype = \"bf16\"\nmax_num_seqs = 2\nspeculative = \"off\"\n");
  // The CPU's own KV dtype is f32: bf16 in the banner comes from the file.
  std::string banner = serve_banner("--config " + (dir / "bf16.toml").string() + " --port 0");
  EXPECT_NE(banner.find("KV cache bf16"), std::string::npos) << banner;
  banner = serve_banner("--config " + (dir / "bf16.toml").string() + " --port 0 --kv-cache-dtype fp8");
  EXPECT_NE(banner.find("KV cache fp8"), std::string::npos) << banner;

  write(dir / "in.jsonl",
        R"({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "x", "max_tokens": 2}})"
        "\n");
  const std::string io = " --input " + (dir / "in.jsonl").string() + " --output " + (dir / "out.jsonl").string();
  // The file's model is used...
  write(dir / "nomodel.toml", "model = \"/nonexistent/gale-model\"\n");
  Result r = run("batch --config " + (dir / "nomodel.toml").string() + io);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("/nonexistent/gale-model"), std::string::npos) << r.err;
  // ...unless -m is given.
  r = run("batch --config " + (dir / "nomodel.toml").string() + " -m " + kModel + io);
  EXPECT_EQ(r.code, 0) << r.err;

  // Unknown keys and bad values: one clear error naming the key.
  write(dir / "typo.toml", "# a typo\nkv_cache_dtpye = \"fp8\"\n");
  for (const std::string& cmd : {std::string("batch") + io, std::string("serve --port 0")}) {
    r = run(cmd + " --config " + (dir / "typo.toml").string());
    EXPECT_NE(r.code, 0) << cmd;
    EXPECT_NE(r.err.find("typo.toml:2: unknown key 'kv_cache_dtpye'"), std::string::npos) << r.err;
  }
  write(dir / "value.toml", "quantization = \"fp7\"\n");
  r = run("batch --config " + (dir / "value.toml").string() + io);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("value.toml:1: 'quantization'"), std::string::npos) << r.err;
  write(dir / "switch.toml", "no_prefix_cache = 1\n");
  r = run("batch --config " + (dir / "switch.toml").string() + io);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("'no_prefix_cache' is a switch"), std::string::npos) << r.err;
  write(dir / "table.toml", "[serve]\n");
  r = run("batch --config " + (dir / "table.toml").string() + io);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("table.toml:1: tables"), std::string::npos) << r.err;
  r = run("batch --config " + (dir / "missing.toml").string() + io);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("cannot read the config file"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

TEST(CliTune, BadFlagsAreOneClearError) {
  const fs::path out = temp_dir("bad");
  Result r = run("tune -m " + kModel + " --out " + out.string() + " --max-quality-loss lots");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--max-quality-loss must be a percentage"), std::string::npos) << r.err;
  r = run("tune -m " + kModel + " --out " + out.string() + " --workload /nonexistent/prompts.txt");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("cannot read --workload"), std::string::npos) << r.err;
  r = run("tune -m /nonexistent/model --out " + out.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("needs a model folder"), std::string::npos) << r.err;
  r = run("tune -m " + kModel + " --out " + out.string() + " --memory-limit 12parsecs");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("bad size unit"), std::string::npos) << r.err;
  fs::remove_all(out);
}
