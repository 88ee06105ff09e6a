// libFuzzer: arbitrary engine arguments as the bindings pass them (gale.LLM(**kwargs),
// gale_options_set): "key\0value" pairs through LLMOptions::set, then the conversions loading
// applies (sizes, backend and load options, speculation), which must refuse bad values with
// gale::Error and never crash. Nothing is loaded.
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/llm.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  gale::LLMOptions o;
  size_t pos = 0;
  while (pos < in.size()) {  // pairs separated by '\n', key and value by '\0'
    size_t end = in.find('\n', pos);
    if (end == std::string::npos) end = in.size();
    const std::string pair = in.substr(pos, end - pos);
    pos = end + 1;
    const size_t zero = pair.find('\0');
    try {
      o.set(pair.substr(0, zero), zero == std::string::npos ? "" : pair.substr(zero + 1));
    } catch (const gale::Error&) {
    }
  }
  o.model.model = "models/default";  // apply_speculation reads only this path's name
  o.model.device = "cpu";
  try {
    gale::engine_config(o.engine, /*gpu=*/false);
    gale::engine_config(o.engine, /*gpu=*/true);
    gale::load_options(o.model);
    gale::backend_options(o.model);
    gale::EngineConfig ec;
    gale::apply_speculation(o.engine, o.model.model, ec);
  } catch (const gale::Error&) {
  }
  return 0;
}
