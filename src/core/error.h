// Three tiers of failure (see ARCHITECTURE.md):
//   GALE_ASSERT  - a broken internal invariant: print and abort.
//   gale::Error  - bad user input or files: thrown inside, caught at the CLI/API edge,
//                  printed as one clear line with a non-zero exit.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace gale {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

}  // namespace gale

#define GALE_ASSERT(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "gale: internal error: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
