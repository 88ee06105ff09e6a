// Chat templates: a model's Jinja2 chat template rendered exactly as transformers'
// apply_chat_template(..., tokenize=False) renders it.
//
// The template comes from <dir>/chat_template.jinja, else <dir>/chat_template.json, else the
// `chat_template` of <dir>/tokenizer_config.json (a string, or a list of {name, template}).
// Special tokens (bos_token, eos_token, ...) come from tokenizer_config.json, as strings or
// {"content": ...} objects.
//
// Messages and tools are nlohmann::ordered_json because key order is visible in the output
// (`tool | tojson`, `for k, v in d.items()`), as with Python dicts.
#pragma once
#include <nlohmann/json.hpp>

#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace gale {

namespace jinja {
class Template;
class Value;
}  // namespace jinja

class ChatTemplate {
 public:
  // `name` picks one of several named templates; "" means "default" (or "tool_use" when tools
  // are given and the model has one, as transformers chooses). Throws gale::Error naming the
  // file on missing/malformed input, and on template syntax errors.
  static ChatTemplate load(const std::string& model_dir, const std::string& name = "");
  // A template given as text, with its special tokens (e.g. {"bos_token": "<s>"}).
  static ChatTemplate from_string(const std::string& source,
                                  const nlohmann::ordered_json& special_tokens = nlohmann::ordered_json::object());

  // messages: non-empty array of {role, content, ...}; tools: array or null; extra_vars: object of
  // template variables (enable_thinking, date_string, ...) that override the defaults.
  // Throws gale::Error when the template raises (raise_exception) or fails.
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt,
                     const nlohmann::ordered_json& extra_vars = nlohmann::ordered_json::object()) const;
  // Same, with a fixed clock for strftime_now (tests).
  std::string render_at(std::time_t now, const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                        bool add_generation_prompt, const nlohmann::ordered_json& extra_vars) const;

  const std::string& source() const;  // text of the default template
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  struct Entry {
    std::string source;
    std::shared_ptr<const jinja::Template> tmpl;
  };
  std::map<std::string, Entry> templates_;  // "default", plus any named ones
  std::string chosen_;                      // explicit name, or "" for automatic choice
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace gale
