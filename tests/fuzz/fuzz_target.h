// What the OpenAI-body fuzz targets parse against: the bundled tokenizer, a small chat
// template and the model limits the server would report.
#pragma once
#include <memory>
#include <string>

#include "serve/openai_api.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace gale::fuzz {

struct Target {
  std::unique_ptr<gale::Tokenizer> tok;
  std::unique_ptr<gale::ChatTemplate> tmpl;
  gale::serve::ModelInfo info;
};

// check_model_name: whether a body's "model" must name this model (the server: yes; batch: no).
inline Target make_target(bool check_model_name) {
  Target t;
  t.tok = gale::Tokenizer::load(std::string(GALE_SOURCE_DIR) + "/models/default");
  t.tmpl = std::make_unique<gale::ChatTemplate>(gale::ChatTemplate::from_string(
      "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}"));
  t.info.name = "fuzz";
  t.info.max_model_len = 256;
  t.info.vocab_size = int64_t(t.tok->vocab_size());
  t.info.check_model_name = check_model_name;
  // tools / tool_choice / reasoning validated as for a Qwen-style model.
  t.info.tool_format = gale::serve::ToolCallFormat::Hermes;
  t.info.reasoning_format = gale::serve::ReasoningFormat::Qwen3;
  return t;
}

}  // namespace gale::fuzz
