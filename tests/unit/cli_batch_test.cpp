// gale batch for real: a clean run, then a run killed with SIGKILL mid-way (plus a torn line, as
// a machine crash would leave) and resumed, then one stopped with SIGTERM and resumed. Every
// custom_id must end up exactly once, every line whole, and the results equal the clean run's.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

using nlohmann::json;
namespace fs = std::filesystem;
extern char** environ;

namespace {

const int kRequests = 40;

fs::path work_dir() {
  fs::path d = fs::temp_directory_path() / ("gale-batch-test-" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

std::string model_dir() { return std::string(GALE_SOURCE_DIR) + "/models/draft"; }

// 40 requests (greedy and seeded-by-custom_id sampling, completions with text and token prompts,
// chat bodies) and three malformed lines (numbers 3, 10 and 43 of the file).
void write_requests(const fs::path& p) {
  std::ofstream f(p);
  const char* prompts[] = {"def add(a, b):", "import numpy as np\n", "class Node:", "# compute the mean\n",
                           "for x in items:", "def main():\n    args = parse_args()\n"};
  int line = 0, n = 0;
  auto put = [&](const std::string& s) {
    f << s << "\n";
    ++line;
  };
  while (n < kRequests) {
    if (line == 2) put("{\"custom_id\": \"broken\", \"body\": ");  // line 3: not JSON
    if (line == 9) put("{\"body\": {\"prompt\": \"no id\"}}");      // line 10: no custom_id
    json body;
    std::string url = "/v1/completions";
    if (n % 7 == 3) {
      url = "/v1/chat/completions";
      body["messages"] = json::array({{{"role", "user"}, {"content", prompts[n % 6]}}});
      body["max_tokens"] = 24;
    } else if (n % 5 == 4) {
      body["prompt"] = json::array({788, 967, 199, n + 10});
      body["max_tokens"] = 32;
    } else {
      body["prompt"] = std::string(prompts[n % 6]) + std::string(size_t(n % 4), ' ');
      body["max_tokens"] = 24 + (n % 3) * 8;
    }
    if (n % 3 == 1) body["temperature"] = 0.7;  // seed derived from the custom_id
    body["ignore_eos"] = true;
    put(json({{"custom_id", "req-" + std::to_string(n)}, {"method", "POST"}, {"url", url}, {"body", body}}).dump());
    ++n;
  }
  put("[1, 2, 3]");  // line 43: not an object
}

struct Proc {
  pid_t pid = -1;
};

Proc start(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  std::string bin = GALE_BINARY;
  argv.push_back(bin.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  Proc p;
  EXPECT_EQ(posix_spawn(&p.pid, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  return p;
}

int wait_exit(Proc p) {
  int status = 0;
  ::waitpid(p.pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

int64_t count_lines(const fs::path& p) {
  std::string s = slurp(p);
  return int64_t(std::count(s.begin(), s.end(), '\n'));
}

// Parses the output: every line whole and valid; custom_id -> result line.
std::map<std::string, json> read_results(const fs::path& p, int64_t* dup = nullptr) {
  std::string s = slurp(p);
  EXPECT_TRUE(s.empty() || s.back() == '\n') << "torn last line";
  std::map<std::string, json> r;
  size_t pos = 0;
  int64_t dups = 0;
  while (pos < s.size()) {
    size_t nl = s.find('\n', pos);
    if (nl == std::string::npos) break;
    json j = json::parse(s.substr(pos, nl - pos), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "invalid line: " << s.substr(pos, nl - pos);
    pos = nl + 1;
    if (j.is_discarded()) continue;
    std::string id = j["custom_id"];
    if (r.count(id)) ++dups;
    r[id] = j;
  }
  if (dup) *dup = dups;
  return r;
}

// The parts of a result that must not depend on how the run was split.
json essence(const json& line) {
  if (line["response"].is_null()) return line["error"];
  const json& b = line["response"]["body"];
  json c = b["choices"][0];
  c.erase("index");
  return {{"object", b["object"]}, {"choice", c}, {"prompt_tokens", b["usage"]["prompt_tokens"]},
          {"completion_tokens", b["usage"]["completion_tokens"]}};
}

std::vector<std::string> batch_args(const fs::path& in, const fs::path& out, const std::string& seqs) {
  return {"batch", "-m", model_dir(), "--input", in.string(), "--output", out.string(), "--max-num-seqs", seqs,
          "--threads", "1"};
}

void wait_for_lines(const fs::path& out, int64_t n, Proc p) {
  for (int i = 0; i < 6000 && count_lines(out) < n; ++i) {
    int status;
    if (::waitpid(p.pid, &status, WNOHANG) == p.pid) FAIL() << "gale batch ended before it could be interrupted";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

TEST(CliBatch, KillResumeAndSignalsLoseNothing) {
  const fs::path dir = work_dir();
  const fs::path in = dir / "requests.jsonl";
  write_requests(in);

  // Clean run.
  const fs::path clean = dir / "clean.jsonl";
  Proc p = start(batch_args(in, clean, "8"), dir / "clean.log");
  ASSERT_EQ(wait_exit(p), 0) << slurp(dir / "clean.log");
  int64_t dups = 0;
  auto ref = read_results(clean, &dups);
  EXPECT_EQ(dups, 0);
  ASSERT_EQ(ref.size(), size_t(kRequests));
  // Exactly the six chat bodies fail, each recorded as an error: models/draft has no chat template.
  std::set<std::string> failed;
  for (auto& [id, j] : ref) {
    if (j["error"].is_null()) {
      EXPECT_EQ(j["response"]["status_code"], 200);
      EXPECT_EQ(j["response"]["body"]["choices"][0]["finish_reason"], "length");
    } else {
      failed.insert(id);
      EXPECT_TRUE(j["response"].is_null()) << j;
      EXPECT_EQ(j["error"]["code"], "invalid_request") << j;
      EXPECT_NE(j["error"]["message"].get<std::string>().find("no chat template"), std::string::npos) << j;
    }
  }
  EXPECT_EQ(failed, (std::set<std::string>{"req-3", "req-10", "req-17", "req-24", "req-31", "req-38"}));
  std::string errs = slurp(clean.string() + ".errors.jsonl");
  EXPECT_NE(errs.find("\"line\":3"), std::string::npos) << errs;
  EXPECT_NE(errs.find("\"line\":10"), std::string::npos) << errs;
  EXPECT_NE(errs.find("\"line\":43"), std::string::npos) << errs;
  const std::string log = slurp(dir / "clean.log");
  EXPECT_NE(log.find("40/40 requests"), std::string::npos) << log;  // plain progress lines (not a TTY)

  // kill -9 mid-run, then a torn line as a machine crash could leave, then resume.
  const fs::path killed = dir / "killed.jsonl";
  p = start(batch_args(in, killed, "1"), dir / "killed.log");
  wait_for_lines(killed, 6, p);
  ::kill(p.pid, SIGKILL);
  EXPECT_EQ(wait_exit(p), 128 + SIGKILL);
  auto partial = read_results(killed);
  EXPECT_GE(partial.size(), 6u);
  EXPECT_LT(partial.size(), size_t(kRequests)) << "finished before the kill: the test proves nothing";
  {
    std::ofstream torn(killed, std::ios::app | std::ios::binary);
    torn << "{\"id\": \"batch_req_torn\", \"custom_id\": \"req-";
  }
  p = start(batch_args(in, killed, "4"), dir / "resume.log");
  ASSERT_EQ(wait_exit(p), 0) << slurp(dir / "resume.log");
  EXPECT_NE(slurp(dir / "resume.log").find("torn"), std::string::npos);
  auto resumed = read_results(killed, &dups);
  EXPECT_EQ(dups, 0);
  ASSERT_EQ(resumed.size(), size_t(kRequests));
  for (auto& [id, j] : ref) EXPECT_EQ(essence(resumed.at(id)), essence(j)) << id;

  // SIGTERM: finishes the step, exits 143 with whole lines; the rerun completes.
  const fs::path termed = dir / "termed.jsonl";
  p = start(batch_args(in, termed, "2"), dir / "term.log");
  wait_for_lines(termed, 4, p);
  ::kill(p.pid, SIGTERM);
  EXPECT_EQ(wait_exit(p), 128 + SIGTERM) << slurp(dir / "term.log");
  read_results(termed);
  p = start(batch_args(in, termed, "8"), dir / "term2.log");
  ASSERT_EQ(wait_exit(p), 0);
  auto after = read_results(termed, &dups);
  EXPECT_EQ(dups, 0);
  ASSERT_EQ(after.size(), size_t(kRequests));
  for (auto& [id, j] : ref) EXPECT_EQ(essence(after.at(id)), essence(j)) << id;

  // A finished job reruns as a no-op.
  p = start(batch_args(in, termed, "8"), dir / "noop.log");
  EXPECT_EQ(wait_exit(p), 0);
  EXPECT_EQ(count_lines(termed), kRequests);
  fs::remove_all(dir);
}

// Runs gale batch to the end: its exit code; its stderr in *log.
int run_batch(const std::vector<std::string>& args, const fs::path& dir, std::string* log = nullptr) {
  const fs::path log_path = dir / "run.log";
  int rc = wait_exit(start(args, log_path));
  if (log) *log = slurp(log_path);
  return rc;
}

std::vector<std::string> with_model(std::vector<std::string> args, const std::string& model) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "-m") args[i + 1] = model;
  return args;
}

std::string request_line(const std::string& id, const json& body, const std::string& url = "/v1/completions") {
  return json({{"custom_id", id}, {"method", "POST"}, {"url", url}, {"body", body}}).dump();
}

// Reading the output as results of its own input said "nothing to do"; a directory read as an
// empty input; --errors naming the input truncated it, or removed it when no line was malformed.
TEST(CliBatch, RefusesSameFilesAndNonRegularInput) {
  const fs::path dir = work_dir() / "files";
  fs::create_directories(dir);
  const fs::path in = dir / "in.jsonl";
  {
    std::ofstream f(in);
    f << request_line("a", {{"prompt", "def f():"}, {"max_tokens", 2}}) << "\n";
  }
  const std::string before = slurp(in);
  fs::create_symlink(in, dir / "sym.jsonl");
  fs::create_hard_link(in, dir / "hard.jsonl");
  fs::create_directories(dir / "adir");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  struct Case {
    std::string input, output, errors, message;
  };
  const std::vector<Case> cases = {
      {in, in, "", "--input and --output are the same file"},
      {in, dir / "sym.jsonl", "", "--input and --output are the same file"},
      {in, dir / "hard.jsonl", "", "--input and --output are the same file"},
      {dir / "adir", dir / "out.jsonl", "", "is not a regular file"},
      {dir / "fifo", dir / "out.jsonl", "", "is not a regular file"},
      {in, dir / "out.jsonl", in, "--errors " + in.string() + " is the input file"},
      {in, dir / "out.jsonl", dir / "out.jsonl", "is the output file"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = batch_args(c.input, c.output, "2");
    if (!c.errors.empty()) args.insert(args.end(), {"--errors", c.errors});
    std::string log;
    EXPECT_EQ(run_batch(args, dir, &log), 1) << c.input << " -> " << c.output << ": " << log;
    EXPECT_NE(log.find(c.message), std::string::npos) << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << "one line: " << log;
    EXPECT_EQ(slurp(in), before) << "the input changed";
  }
  fs::remove_all(dir);
}

// Any line with a string custom_id counted as done: request lines, bare ids, other jobs' results.
TEST(CliBatch, ResumeTrustsOnlyRecordedResults) {
  const fs::path dir = work_dir() / "resume";
  fs::create_directories(dir);
  const fs::path in = dir / "in.jsonl", out = dir / "out.jsonl";
  const std::string a = request_line("a", {{"prompt", "def f():"}, {"max_tokens", 2}});
  {
    std::ofstream f(in);
    f << a << "\n" << request_line("b", {{"prompt", "import os"}, {"max_tokens", 2}}) << "\n"
      << request_line("c", {{"prompt", "class A:"}, {"max_tokens", 2}}) << "\n";
  }
  // A clean run of "c" gives a real result line to keep.
  {
    std::ofstream f(dir / "c.jsonl");
    f << request_line("c", {{"prompt", "class A:"}, {"max_tokens", 2}}) << "\n";
  }
  ASSERT_EQ(run_batch(batch_args(dir / "c.jsonl", out, "2"), dir), 0);
  std::string c_result = slurp(out);
  {
    std::ofstream f(out, std::ios::app);
    f << a << "\n";                                // the request line of "a"
    f << R"({"custom_id": "b"})" << "\n";            // a bare custom_id
    f << R"({"id":"x","custom_id":"zz","response":null,"error":{"code":"c","message":"m"}})" << "\n";  // not in the input
  }
  std::string log;
  ASSERT_EQ(run_batch(batch_args(in, out, "2"), dir, &log), 0) << log;
  EXPECT_NE(log.find("resuming: 1 of 3 requests"), std::string::npos) << log;
  EXPECT_NE(log.find("1 result(s) for custom_ids not in the input"), std::string::npos) << log;
  auto results = read_results(out);
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(results.count(id)) << id;
    EXPECT_TRUE(results[id]["error"].is_null()) << results[id];
    EXPECT_EQ(results[id]["response"]["status_code"], 200) << results[id];
  }
  EXPECT_EQ(slurp(out).find(c_result), 0u) << "the earlier result is kept, not recomputed";
  fs::remove_all(dir);
}

// Batch bodies go through the server's parser: ids wrapped to int32 (4294967301 ran as 5),
// max_tokens 0.9 ran as 0, 1e20 and 2^63 were undefined double -> int conversions, stop was unbounded.
TEST(CliBatch, BodiesFollowTheServersRules) {
  const fs::path dir = work_dir() / "rules";
  fs::create_directories(dir);
  const fs::path in = dir / "in.jsonl", out = dir / "out.jsonl";
  json stop17 = json::array();
  for (int i = 0; i < 17; ++i) stop17.push_back(std::to_string(i));
  {
    std::ofstream f(in);
    f << request_line("ok", {{"model", "any-name"}, {"prompt", "def f():"}, {"max_tokens", 2}}) << "\n";
    f << request_line("wrap", {{"prompt", json::array({788, 4294967301ll})}, {"max_tokens", 2}}) << "\n";
    f << request_line("frac", {{"prompt", "x"}, {"max_tokens", 0.9}}) << "\n";
    f << request_line("topk", {{"prompt", "x"}, {"max_tokens", 2}, {"top_k", 1e20}}) << "\n";
    f << R"({"custom_id":"big","body":{"prompt":"x","max_tokens":9223372036854775808}})" << "\n";
    f << request_line("stop", {{"prompt", "x"}, {"max_tokens", 2}, {"stop", stop17}}) << "\n";
    f << request_line("long", {{"prompt", "x"}, {"max_tokens", 2}, {"stop", std::string(2000, 'a')}}) << "\n";
  }
  std::string log;
  ASSERT_EQ(run_batch(batch_args(in, out, "2"), dir, &log), 0) << log;
  auto r = read_results(out);
  ASSERT_EQ(r.size(), 7u) << slurp(out);
  EXPECT_EQ(r["ok"]["response"]["status_code"], 200) << r["ok"];
  const std::map<std::string, std::string> expected = {
      {"wrap", "token id 4294967301 is out of range"},   {"frac", "'max_tokens' must be an integer"},
      {"topk", "'top_k' must be an integer"},            {"big", "'max_tokens' is out of range"},
      {"stop", "'stop' takes at most 16 sequences"},     {"long", "'stop' sequences must be at most 1024 bytes"}};
  for (auto& [id, msg] : expected) {
    ASSERT_TRUE(r[id]["error"].is_object()) << id << ": " << r[id];
    EXPECT_EQ(r[id]["error"]["code"], "invalid_request");
    EXPECT_NE(r[id]["error"]["message"].get<std::string>().find(msg), std::string::npos) << id << ": " << r[id];
  }
  fs::remove_all(dir);
}

// Content nested 100k deep crashed the job in JSON serialization, and since resume retried the
// line, every rerun crashed again. Now it is one malformed line in the errors file.
TEST(CliBatch, DeepNestingIsOneMalformedLine) {
  const fs::path dir = work_dir() / "deep";
  const fs::path model = dir / "model";  // models/draft plus a chat template, so chat bodies render
  fs::create_directories(model);
  for (auto& e : fs::directory_iterator(model_dir())) fs::create_symlink(e.path(), model / e.path().filename());
  {
    std::ofstream t(model / "chat_template.jinja");
    t << "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  }
  const fs::path in = dir / "in.jsonl", out = dir / "out.jsonl";
  {
    std::ofstream f(in);
    f << request_line("chat", {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}, {"max_tokens", 2}},
                      "/v1/chat/completions")
      << "\n";
    const int depth = 100000;
    f << R"({"custom_id":"deep","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":)"
      << std::string(depth, '[') << std::string(depth, ']') << "}]}}\n";
  }
  const auto args = with_model(batch_args(in, out, "2"), model.string());
  std::string log;
  ASSERT_EQ(run_batch(args, dir, &log), 0) << log;
  auto r = read_results(out);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_EQ(r["chat"]["response"]["status_code"], 200) << r["chat"];
  const std::string errs = slurp(out.string() + ".errors.jsonl");
  EXPECT_NE(errs.find(R"({"line":2,"error":"JSON nested deeper than 64 levels"})"), std::string::npos) << errs;
  // The rerun has nothing left to run and exits cleanly, listing the line again.
  ASSERT_EQ(run_batch(args, dir, &log), 0) << log;
  EXPECT_NE(log.find("nothing to do"), std::string::npos) << log;
  EXPECT_NE(slurp(out.string() + ".errors.jsonl").find("\"line\":2"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
