#include "cli/bench_record.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace gale::cli {

BenchRecord::BenchRecord(const std::string& path) : path_(path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) throw gale::Error("--record: cannot create " + parent.string() + ": " + ec.message());
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw gale::Error("--record: cannot open " + path + ": " + std::strerror(errno));
}

BenchRecord::~BenchRecord() {
  if (fd_ >= 0) ::close(fd_);
}

void BenchRecord::append(const nlohmann::json& row) {
  // Invalid UTF-8 (a model path) is replaced rather than thrown on after the run.
  const std::string line = row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  ssize_t n;
  do n = ::write(fd_, line.data(), line.size());
  while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(line.size()))
    throw gale::Error("--record: writing " + path_ + " failed: " +
                      (n < 0 ? std::string(std::strerror(errno)) : "short write (disk full?)"));
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t b = line.find_first_not_of(" \t", colon + 1);
    const size_t e = line.find_last_not_of(" \t");
    return b == std::string::npos ? "unknown" : line.substr(b, e + 1 - b);
  }
  return "unknown";
}

std::string utc_now_iso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace gale::cli
