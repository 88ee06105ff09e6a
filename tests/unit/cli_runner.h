// Runs the gale binary under test (GALE_BINARY, a compile definition of the CLI test targets) the
// way a user's shell does, for the CLI tests.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace gale::test {

struct CliResult {
  int code;
  std::string out, err;
};

// Runs gale with args (a shell-quoted string); stdout and stderr captured separately. A run
// that hangs is killed after 300 s and reads as exit code 124.
inline CliResult run_gale(const std::string& args) {
  namespace fs = std::filesystem;
  fs::path err_file = fs::temp_directory_path() / ("gale-cli-err-" + std::to_string(::getpid()));
  std::string cmd = "timeout 300 " + std::string(GALE_BINARY) + " " + args + " 2>" + err_file.string() + " </dev/null";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  fs::remove(err_file);
  return r;
}

}  // namespace gale::test
