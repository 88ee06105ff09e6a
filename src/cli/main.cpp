// gale: command-line entry point. Thin: every subcommand lives in its own cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "cli/command.h"
#include "core/error.h"

namespace gale::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> r;
  return r;
}

std::vector<int32_t> parse_id_list(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  auto skip_ws = [&] { while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i; };
  skip_ws();
  if (i == s.size()) return ids;
  while (true) {
    skip_ws();
    size_t start = i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start || (i == start + 1 && (s[start] == '-' || s[start] == '+')))
      throw Error("--ids: expected a comma-separated list of integers, got '" + s + "'");
    long long v = std::strtoll(s.c_str() + start, nullptr, 10);
    if (i - start > 11 || v < INT32_MIN || v > INT32_MAX)
      throw Error("--ids: token id out of range: " + s.substr(start, i - start));
    ids.push_back(int32_t(v));
    skip_ws();
    if (i == s.size()) break;
    if (s[i] != ',') throw Error("--ids: expected ',' at position " + std::to_string(i) + " in '" + s + "'");
    ++i;
  }
  return ids;
}

}  // namespace gale::cli

int main(int argc, char** argv) {
  CLI::App app{"gale: fast LLM inference for Hugging Face models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "gale 0.1.0");
  auto& reg = gale::cli::command_registry();
  std::stable_sort(reg.begin(), reg.end(), [](auto& a, auto& b) { return a.order < b.order; });
  for (auto& c : reg) c.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const gale::Error& e) {
    std::fprintf(stderr, "gale: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "gale: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gale: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
