// libFuzzer: arbitrary bytes as a safetensors file. Must throw gale::Error or succeed, and every
// tensor it accepts must lie inside the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "loader/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto tensors = gale::parse_safetensors(data, size, "fuzz");
    for (const auto& t : tensors) {
      if (t.data < data || t.data + t.nbytes > data + size) std::abort();
      volatile uint8_t sink = 0;
      if (t.nbytes) sink = t.data[t.nbytes - 1];  // ASan would flag an out-of-bounds view
      (void)sink;
    }
  } catch (const gale::Error&) {
  }
  return 0;
}
