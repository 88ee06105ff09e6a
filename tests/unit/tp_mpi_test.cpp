// Tensor parallelism across processes, as users launch it: mpirun -np 2 gale ... --tp 2 against
// the same command on one rank (greedy ids token for token on the fixtures and the bundled
// model; gale batch's results line for line), kill -9 of one rank ending the job within seconds,
// and the errors of a wrong launch. Skipped, saying why, where the build has no MPI.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "test_util.h"

extern char** environ;

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

#ifdef GALE_MPIEXEC
constexpr const char* kMpiexec = GALE_MPIEXEC;
#else
constexpr const char* kMpiexec = nullptr;
#endif

#define SKIP_WITHOUT_MPI() \
  if (!kMpiexec) GTEST_SKIP() << "this build has no MPI (CMake found none): tensor-parallel runs are not tested"

// What every rank needs on this machine: OpenMPI refuses root without both variables, and the
// ranks share 2 cores (one thread each; --oversubscribe lets 2 ranks run on fewer slots).
void set_env() {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("GALE_THREADS", "1", 1);
  // ASan builds: OpenMPI's own allocations at exit are not ours to fix (tests/lsan-openmpi.supp).
  // Its (and PMIx's) components are dlclose()d at MPI_Finalize, which leaves their leaks
  // "<unknown module>" that no suppression can name: keep them loaded, and unwind slowly (they
  // have no frame pointers) so each leak's stack reaches a library the file names.
  ::setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
  ::setenv("PMIX_MCA_mca_base_component_disable_dlclose", "1", 0);
  const std::string supp = std::string(GALE_SOURCE_DIR) + "/tests/lsan-openmpi.supp";
  ::setenv("LSAN_OPTIONS", ("fast_unwind_on_malloc=0:suppressions=" + supp + ":print_suppressions=0").c_str(), 0);
}

struct Result {
  int code = -1;
  std::string out, err;
};

// A shell command line, stdout and stderr captured; killed after 300 s (exit code 124).
Result sh(const std::string& cmd) {
  set_env();
  const fs::path err_file = fs::temp_directory_path() / ("gale-tp-err-" + std::to_string(::getpid()));
  FILE* p = ::popen(("timeout 300 " + cmd + " 2>" + err_file.string() + " </dev/null").c_str(), "r");
  Result r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  fs::remove(err_file);
  return r;
}

std::string gale() { return GALE_BINARY; }
std::string mpirun(int np) { return std::string(kMpiexec) + " --oversubscribe -np " + std::to_string(np) + " " + gale(); }
std::string fixture(const std::string& name) { return gale::test::fixtures_dir() + "/models/" + name; }

std::vector<int> generated_ids(const Result& r) {
  EXPECT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out << r.err;
  if (j.is_discarded() || !j.contains("ids")) return {};
  return j["ids"].get<std::vector<int>>();
}

struct Launch {
  std::string fixture, flag;  // --tp 2 or --pp 2
};

void PrintTo(const Launch& l, std::ostream* os) { *os << l.fixture << " " << l.flag; }

class TpGenerate : public ::testing::TestWithParam<Launch> {};

// The greedy continuation of the fixture's prompt with the model split over 2 ranks is the one
// rank's, token for token. --tp: the all-reduced partial sums differ from one product's sum only
// in rounding, which must not move an argmax on these models; --pp: each stage runs the same ops
// on the same numbers, so the logits are the same bits. A failure names the fixture.
TEST_P(TpGenerate, GreedyIdsMatchOneRank) {
  SKIP_WITHOUT_MPI();
  const Launch l = GetParam();
  const json ref = gale::test::read_json(fixture(l.fixture) + "/reference.json");
  std::string ids;
  for (int id : ref["greedy_prompt_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string args = " generate -m " + fixture(l.fixture) + " --ids " + ids + " -n 24 --ignore-eos --json";
  const std::vector<int> one = generated_ids(sh(gale() + args));
  ASSERT_EQ(one.size(), 24u);
  const Result two = sh(mpirun(2) + args + " " + l.flag);
  EXPECT_EQ(generated_ids(two), one) << two.err;
}

std::string launch_name(const ::testing::TestParamInfo<Launch>& info) {
  std::string s = info.param.fixture + "_" + info.param.flag.substr(2, 2);
  for (char& c : s)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// Dense fixtures of every attention layout: KV heads split (llama, mistral, phi3 with its fused
// q|k|v and gate|up), one KV head replicated on both ranks (qwen2, with q/k/v biases), q/k norm
// (qwen3), sliding windows (mistral, phi3_swa), bf16 weights, llama3 RoPE scaling.
INSTANTIATE_TEST_SUITE_P(TensorParallel, TpGenerate,
                         ::testing::Values(Launch{"llama-f32", "--tp 2"}, Launch{"llama-bf16", "--tp 2"},
                                           Launch{"qwen2-f32", "--tp 2"}, Launch{"qwen3-f32", "--tp 2"},
                                           Launch{"mistral-f32", "--tp 2"}, Launch{"phi3-f32", "--tp 2"},
                                           Launch{"phi3_swa-f32", "--tp 2"}, Launch{"long_llama3-f32", "--tp 2"}),
                         launch_name);
// Layers split over 2 stages: the dense layouts, an MoE model and a quantized checkpoint too
// (a stage keeps whole layers, whatever is inside them).
INSTANTIATE_TEST_SUITE_P(Pipeline, TpGenerate,
                         ::testing::Values(Launch{"llama-f32", "--pp 2"}, Launch{"qwen2-f32", "--pp 2"},
                                           Launch{"qwen3-f32", "--pp 2"}, Launch{"phi3_swa-f32", "--pp 2"},
                                           Launch{"mixtral-f32", "--pp 2"}, Launch{"qwen2-cttensor", "--pp 2"}),
                         launch_name);

// The bundled model from a text prompt: rank 0 tokenizes and detokenizes; 6 heads and 2 KV
// heads become 3 and 1 per rank.
// Also with bf16 activations and weights quantized at load. Under --tp the shard is quantized:
// the column-parallel products keep one rank's per-row scales, but o and down hold part of each
// row, so their int8 scales come from those columns only (a numerics change, which does not move
// these 32 tokens; under --pp whole layers are quantized as on one rank).
TEST(TpMpi, BundledModelGreedyTextMatchesOneRank) {
  SKIP_WITHOUT_MPI();
  for (const char* extra : {"", " --dtype bf16", " --quantization int8"}) {
    const std::string args = std::string(" generate -p 'Once upon a time' -n 32 --ignore-eos --json") + extra;
    const Result a = sh(gale() + args);
    ASSERT_EQ(a.code, 0) << a.err;
    const json ja = json::parse(a.out);
    for (const char* flag : {" --tp 2", " --pp 2"}) {
      const Result b = sh(mpirun(2) + args + flag);
      ASSERT_EQ(b.code, 0) << extra << flag << ": " << b.err;
      const json jb = json::parse(b.out);
      EXPECT_EQ(jb["ids"], ja["ids"]) << extra << flag;
      EXPECT_EQ(jb["text"], ja["text"]) << extra << flag;
    }
  }
}

// gale batch over 2 ranks: the same result per custom_id as on one rank, greedy and seeded
// sampling (the Sampler runs on rank 0 over the gathered logits), several sequences per step.
TEST(TpMpi, BatchResultsMatchOneRank) {
  SKIP_WITHOUT_MPI();
  const fs::path dir = fs::temp_directory_path() / ("gale-tp-batch-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream in(dir / "in.jsonl");
    const char* prompts[] = {"Once upon a time", "The little dog", "She opened the door and", "Tom and Lily"};
    for (int i = 0; i < 6; ++i) {
      json body = {{"prompt", prompts[i % 4]}, {"max_tokens", 16 + 4 * i}, {"ignore_eos", true}};
      if (i % 2 == 1) body["temperature"] = 0.8;  // the seed comes from the custom_id
      in << json({{"custom_id", "r" + std::to_string(i)}, {"method", "POST"}, {"url", "/v1/completions"},
                  {"body", body}}).dump()
         << "\n";
    }
  }
  auto run = [&](const std::string& prefix, const std::string& out, const std::string& extra) {
    // Speculation off everywhere: a sampled request's draws depend on how many tokens each
    // verify accepts, so one rank with the bundled draft (the default) and the ranks without
    // it would draw differently, though from the same distribution.
    const Result r = sh(prefix + " batch --input " + (dir / "in.jsonl").string() + " --output " + (dir / out).string() +
                        " --max-num-seqs 4 --speculative off" + extra);
    EXPECT_EQ(r.code, 0) << r.err;
    std::map<std::string, json> res;
    std::ifstream f(dir / out);
    std::string line;
    while (std::getline(f, line)) {
      json j = json::parse(line);
      json c = j["response"]["body"]["choices"][0];
      res[j["custom_id"]] = {c["text"], c["finish_reason"], j["response"]["body"]["usage"]["completion_tokens"]};
    }
    return res;
  };
  const auto one = run(gale(), "one.jsonl", ""), two = run(mpirun(2), "two.jsonl", " --tp 2");
  EXPECT_EQ(one.size(), 6u);
  EXPECT_EQ(two, one);
  EXPECT_EQ(run(mpirun(2), "pp.jsonl", " --pp 2"), one);
  // A rerun over a finished output has nothing to do: the followers are told before loading.
  const Result again = sh(mpirun(2) + " batch --input " + (dir / "in.jsonl").string() + " --output " +
                          (dir / "two.jsonl").string() + " --tp 2");
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.err.find("nothing to do"), std::string::npos) << again.err;
  fs::remove_all(dir);
}

// The pids of mpirun's children by their rank (OMPI_COMM_WORLD_RANK in their environment).
std::map<int, pid_t> ranks_of(pid_t mpirun_pid) {
  std::map<int, pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string comm, state;
    long p = 0, ppid = 0;
    if (!(stat >> p >> comm >> state >> ppid) || ppid != mpirun_pid) continue;
    std::ifstream env(e.path() / "environ", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(env)), {});
    const std::string key = std::string("OMPI_COMM_WORLD_RANK=");
    const size_t at = all.find(key);
    if (at != std::string::npos) out[std::atoi(all.c_str() + at + key.size())] = pid_t(p);
  }
  return out;
}

pid_t spawn_logged(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, copy[0].c_str(), &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// kill -9 of rank 1 in the middle of a generation (rank 0 waiting in its all-reduce) ends the
// whole job within seconds with a non-zero exit and mpirun's message naming the rank: no hang.
TEST(TpMpi, KillNineOfOneRankEndsTheJob) {
  SKIP_WITHOUT_MPI();
  set_env();
  const fs::path log = fs::temp_directory_path() / ("gale-tp-kill-" + std::to_string(::getpid()) + ".log");
  // The bundled model decodes slowly enough over 2 ranks for the kill to land mid-run.
  const pid_t pid = spawn_logged({kMpiexec, "--oversubscribe", "-np", "2", gale(), "generate", "-p", "Once upon a time",
                                  "-n", "900", "--ignore-eos", "--tp", "2"},
                                 log);
  ASSERT_GT(pid, 0) << "mpirun did not start";
  using clock = std::chrono::steady_clock;
  // Both ranks up, then a little decoding.
  std::map<int, pid_t> ranks;
  for (auto t0 = clock::now(); clock::now() - t0 < std::chrono::seconds(60);) {
    ranks = ranks_of(pid);
    if (ranks.size() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(ranks.size(), 2u) << "mpirun did not start 2 ranks";
  // Half a second: the model loads in a fraction of that, and 900 tokens over 2 one-thread ranks
  // take 2 s or more even on an idle machine (3 s let an idle machine finish the job first).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, WNOHANG), 0) << "the job ended before the kill";
  const auto killed = clock::now();
  ASSERT_EQ(::kill(ranks.at(1), SIGKILL), 0);
  bool ended = false;
  while (clock::now() - killed < std::chrono::seconds(30)) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      ended = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double secs = std::chrono::duration<double>(clock::now() - killed).count();
  if (!ended) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  std::ifstream f(log);
  const std::string err((std::istreambuf_iterator<char>(f)), {});
  fs::remove(log);
  ASSERT_TRUE(ended) << "the job still ran 30 s after rank 1 was killed\n" << err;
  std::printf("job ended %.2f s after kill -9 of rank 1\n", secs);
  EXPECT_LT(secs, 15.0) << err;
  EXPECT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0)) << err;
  EXPECT_NE(err.find("signal 9"), std::string::npos) << err;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// gale serve over 2 ranks: rank 0 answers HTTP with the one rank's greedy text, and SIGTERM to
// rank 0 (mpirun's own SIGTERM ends the whole job at once) drains it, tells the other rank to
// exit, and the job ends with 0.
TEST(TpMpi, ServeAnswersAndStopsCleanly) {
  SKIP_WITHOUT_MPI();
  set_env();
  const Result ref = sh(gale() + " generate -p 'Once upon a time' -n 20 --ignore-eos --json");
  ASSERT_EQ(ref.code, 0) << ref.err;
  const fs::path log = fs::temp_directory_path() / ("gale-tp-serve-" + std::to_string(::getpid()) + ".log");
  const pid_t pid = spawn_logged({kMpiexec, "--oversubscribe", "-np", "2", gale(), "serve", "--port", "0", "--tp", "2"}, log);
  using clock = std::chrono::steady_clock;
  std::string port;
  for (auto t0 = clock::now(); port.empty() && clock::now() - t0 < std::chrono::seconds(60);) {
    const std::string err = slurp(log);
    const std::string key = "listening on http://127.0.0.1:";
    if (size_t at = err.find(key); at != std::string::npos) {
      const size_t end = err.find_first_not_of("0123456789", at + key.size());
      if (end != std::string::npos) port = err.substr(at + key.size(), end - at - key.size());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::map<int, pid_t> ranks = ranks_of(pid);
  if (port.empty() || ranks.size() != 2) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    FAIL() << "the server did not come up on 2 ranks\n" << slurp(log);
  }
  const Result r = sh("curl -s http://127.0.0.1:" + port +
                      "/v1/completions -H 'content-type: application/json' -d '{\"prompt\": \"Once upon a time\", "
                      "\"max_tokens\": 20, \"temperature\": 0, \"ignore_eos\": true}'");
  const json body = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(body.is_discarded()) << r.out;
  EXPECT_EQ(body["choices"][0]["text"], json::parse(ref.out)["text"]) << r.out;
  ASSERT_EQ(::kill(ranks.at(0), SIGTERM), 0);
  int status = 0;
  bool ended = false;
  for (auto t0 = clock::now(); clock::now() - t0 < std::chrono::seconds(30);) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      ended = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ended) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  const std::string err = slurp(log);
  fs::remove(log);
  ASSERT_TRUE(ended) << err;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << err;
}

// mpirun -np 2 gale batch --dp 2: two whole replicas, each running every other request into the
// one output file. The results are the one rank's per custom_id; a kill -9 of one replica ends
// the job, and the rerun completes it with every request exactly once (nothing lost, nothing
// run twice into the file).
TEST(TpMpi, DataParallelBatchSurvivesKillNineAndResumes) {
  SKIP_WITHOUT_MPI();
  set_env();
  const fs::path dir = fs::temp_directory_path() / ("gale-dp-batch-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int n = 16;
  {
    std::ofstream in(dir / "in.jsonl");
    const char* prompts[] = {"Once upon a time", "The little dog", "She opened the door and", "Tom and Lily"};
    for (int i = 0; i < n; ++i) {
      json body = {{"prompt", prompts[i % 4]}, {"max_tokens", 300}, {"ignore_eos", true}};
      if (i % 2 == 1) body["temperature"] = 0.8;
      in << json({{"custom_id", "r" + std::to_string(i)}, {"method", "POST"}, {"url", "/v1/completions"},
                  {"body", body}}).dump()
         << "\n";
    }
  }
  auto results = [&](const fs::path& out) {
    std::map<std::string, std::vector<json>> res;
    std::ifstream f(out);
    std::string line;
    while (std::getline(f, line)) {
      json j = json::parse(line, nullptr, false);
      EXPECT_FALSE(j.is_discarded()) << line;
      if (j.is_discarded()) continue;
      res[j["custom_id"]].push_back(j["response"]["body"]["choices"][0]["text"]);
    }
    return res;
  };
  const std::string in = (dir / "in.jsonl").string();
  // Speculation off (see BatchResultsMatchOneRank): the replicas batch requests differently.
  const Result one = sh(gale() + " batch --input " + in + " --output " + (dir / "one.jsonl").string() + " --speculative off");
  ASSERT_EQ(one.code, 0) << one.err;
  const auto want = results(dir / "one.jsonl");
  ASSERT_EQ(want.size(), size_t(n));

  const fs::path out = dir / "dp.jsonl", log = dir / "dp.log";
  const pid_t pid = spawn_logged(
      {kMpiexec, "--oversubscribe", "-np", "2", gale(), "batch", "--input", in, "--output", out.string(), "--dp", "2", "--speculative", "off"},
      log);
  using clock = std::chrono::steady_clock;
  std::map<int, pid_t> ranks;
  for (auto t0 = clock::now(); ranks.size() < 2 && clock::now() - t0 < std::chrono::seconds(60);) {
    ranks = ranks_of(pid);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Some results in the file, not all: then one replica dies.
  for (auto t0 = clock::now(); clock::now() - t0 < std::chrono::seconds(60);) {
    if (fs::exists(out) && fs::file_size(out) > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int status = 0;
  const bool running = ::waitpid(pid, &status, WNOHANG) == 0;
  if (running && ranks.size() == 2) ::kill(ranks.at(1), SIGKILL);
  if (running) ::waitpid(pid, &status, 0);
  ASSERT_TRUE(running) << "the job ended before the kill\n" << slurp(log);
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  const size_t partial = results(out).size();
  EXPECT_LT(partial, size_t(n)) << "every request finished before the kill";

  const Result again = sh(mpirun(2) + " batch --input " + in + " --output " + out.string() + " --dp 2 --speculative off");
  ASSERT_EQ(again.code, 0) << again.err;
  const auto got = results(out);
  ASSERT_EQ(got.size(), size_t(n));
  for (const auto& [id, texts] : got) {
    EXPECT_EQ(texts.size(), 1u) << id << " recorded " << texts.size() << " times";
    EXPECT_EQ(texts, want.at(id)) << id;
  }
  std::printf("%zu of %d results before the kill; the rerun completed the rest\n", partial, n);
  fs::remove_all(dir);
}

// A wrong launch is one clear line on every rank, never a hang.
TEST(TpMpi, LaunchErrorsAreClear) {
  const std::string args = " generate -m " + fixture("llama-f32") + " --ids 1,2,3 -n 2";
  const Result both = sh(gale() + args + " --tp 2 --pp 2");
  EXPECT_EQ(both.code, 1);
  EXPECT_NE(both.err.find("combining tensor, pipeline and data parallelism is not implemented"), std::string::npos)
      << both.err;
  const Result alone = sh(gale() + args + " --tp 2");  // no mpirun: one rank (or no MPI at all)
  EXPECT_EQ(alone.code, 1);
  if (kMpiexec) {
    EXPECT_NE(alone.err.find("mpirun started 1 rank(s): launch with mpirun -np 2"), std::string::npos) << alone.err;
    const Result moe = sh(mpirun(2) + " generate -m " + fixture("mixtral-f32") + " --ids 1,2,3 -n 2 --tp 2");
    EXPECT_NE(moe.code, 0);
    EXPECT_NE(moe.err.find("tensor parallelism of MoE models"), std::string::npos) << moe.err;
  } else {
    EXPECT_NE(alone.err.find("built without MPI"), std::string::npos) << alone.err;
  }
}

}  // namespace
