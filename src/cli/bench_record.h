// `gale bench --record`: one JSON line per run, appended to a file kept under version control
// (bench/results/), so that two commits can be compared later (tools/bench-compare.py).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace gale::cli {

// The file --record writes when given no path (relative to the current directory).
inline constexpr const char* kDefaultBenchRecord = "bench/results/bench.jsonl";

// Opened before the run, so that a path that cannot be written fails before minutes of
// measuring; the row is written only by append(), after the run succeeded. Missing parent folders
// are created.
class BenchRecord {
 public:
  explicit BenchRecord(const std::string& path);
  ~BenchRecord();
  BenchRecord(const BenchRecord&) = delete;
  BenchRecord& operator=(const BenchRecord&) = delete;

  // Appends row as one line in one write(2) to a file opened O_APPEND: rows of runs that finish
  // at the same moment never interleave. Throws gale::Error if the write fails or is short.
  void append(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// The "model name" of /proc/cpuinfo's first processor ("unknown" where there is none); no host name.
std::string cpu_model_name();
// Now, in UTC, as ISO 8601 with seconds: "2026-12-03T19:45:12Z".
std::string utc_now_iso8601();

}  // namespace gale::cli
