// gale batch for real: a clean run, then a run killed with SIGKILL mid-way (plus a torn line, as
// a machine crash would leave) and resumed, then one stopped with SIGTERM and resumed. Every
// custom_id must end up exactly once, every line whole, and the results equal the clean run's.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
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
  int ok = 0;
  for (auto& [id, j] : ref) {
    if (j["error"].is_null()) {
      ++ok;
      EXPECT_EQ(j["response"]["status_code"], 200);
      EXPECT_EQ(j["response"]["body"]["choices"][0]["finish_reason"], "length");
    }
  }
  EXPECT_GE(ok, kRequests - 6);  // chat bodies may fail where the model has no chat template
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

}  // namespace
