// Chat templates: loading from a model folder and rendering with transformers' variables.
#include "tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/jinja_interp.h"

namespace gale {

namespace {

namespace fs = std::filesystem;

bool read_file(const fs::path& p, std::string& out) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

nlohmann::ordered_json parse_json_file(const fs::path& p) {
  std::string text;
  if (!read_file(p, text)) throw Error("cannot read " + p.string());
  check_json_depth(text, p.string());  // templates walk these values recursively
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(p.string() + ": invalid JSON: " + e.what());
  }
}

std::shared_ptr<const jinja::Template> compile(const std::string& source, const std::string& where) {
  try {
    return std::make_shared<const jinja::Template>(source);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

// Special tokens as transformers' special_tokens_map exposes them to templates.
nlohmann::ordered_json read_special_tokens(const nlohmann::ordered_json& cfg) {
  auto out = nlohmann::ordered_json::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    auto it = cfg.find(key);
    if (it == cfg.end()) continue;
    if (it->is_string()) out[key] = *it;
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) out[key] = (*it)["content"];
  }
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::from_string(const std::string& source, const nlohmann::ordered_json& special_tokens) {
  ChatTemplate ct;
  ct.templates_["default"] = {source, compile(source, "chat template")};
  if (special_tokens.is_object()) ct.special_tokens_ = special_tokens;
  return ct;
}

ChatTemplate ChatTemplate::load(const std::string& model_dir, const std::string& name) {
  fs::path dir(model_dir);
  if (!fs::is_directory(dir)) throw Error("model directory not found: " + model_dir);
  ChatTemplate ct;
  ct.chosen_ = name;
  nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path)) {
    cfg = parse_json_file(cfg_path);
    if (!cfg.is_object()) throw Error(cfg_path.string() + ": expected a JSON object");
    ct.special_tokens_ = read_special_tokens(cfg);
  }

  std::string text;
  if (read_file(dir / "chat_template.jinja", text)) {
    ct.templates_["default"] = {text, compile(text, (dir / "chat_template.jinja").string())};
  } else if (fs::exists(dir / "chat_template.json")) {
    auto j = parse_json_file(dir / "chat_template.json");
    if (!j.is_object() || !j.contains("chat_template") || !j["chat_template"].is_string())
      throw Error((dir / "chat_template.json").string() + ": expected {\"chat_template\": \"...\"}");
    std::string src = j["chat_template"].get<std::string>();
    ct.templates_["default"] = {src, compile(src, (dir / "chat_template.json").string())};
  } else if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
    const auto& t = cfg["chat_template"];
    if (t.is_string()) {
      ct.templates_["default"] = {t.get<std::string>(), compile(t.get<std::string>(), cfg_path.string())};
    } else if (t.is_array()) {
      for (auto& e : t) {
        if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() || !e["template"].is_string())
          throw Error(cfg_path.string() + ": chat_template list entries must be {\"name\", \"template\"} strings");
        std::string n = e["name"].get<std::string>();
        std::string src = e["template"].get<std::string>();
        ct.templates_[n] = {src, compile(src, cfg_path.string() + " (template '" + n + "')")};
      }
    } else {
      throw Error(cfg_path.string() + ": chat_template must be a string or a list of {name, template}");
    }
  }
  if (ct.templates_.empty()) throw Error("no chat template in " + model_dir + " (chat_template.jinja or tokenizer_config.json)");
  if (!name.empty() && !ct.templates_.count(name)) {
    std::string have;
    for (auto& [k, v] : ct.templates_) have += (have.empty() ? "" : ", ") + k;
    throw Error("chat template '" + name + "' not found in " + model_dir + " (available: " + have + ")");
  }
  if (name.empty() && !ct.templates_.count("default") && ct.templates_.size() > 1) {
    std::string have;
    for (auto& [k, v] : ct.templates_) have += (have.empty() ? "" : ", ") + k;
    throw Error("model " + model_dir + " has several chat templates and none named 'default'; pick one of: " + have);
  }
  return ct;
}

const std::string& ChatTemplate::source() const {
  auto it = templates_.find(chosen_.empty() ? "default" : chosen_);
  if (it == templates_.end()) it = templates_.begin();
  return it->second.source;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                 bool add_generation_prompt, const nlohmann::ordered_json& extra_vars) const {
  return render_at(std::time(nullptr), messages, tools, add_generation_prompt, extra_vars);
}

std::string ChatTemplate::render_at(std::time_t now, const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& tools, bool add_generation_prompt,
                                    const nlohmann::ordered_json& extra_vars) const {
  if (!messages.is_array()) throw Error("chat template: messages must be a JSON array");
  // transformers' apply_chat_template refuses this before rendering (checked with 5.17).
  if (messages.empty()) throw Error("chat template: cannot apply a chat template to an empty conversation; provide at least one message");
  if (!tools.is_null() && !tools.is_array()) throw Error("chat template: tools must be a JSON array or null");
  if (!extra_vars.is_null() && !extra_vars.is_object()) throw Error("chat template: extra variables must be a JSON object");

  // transformers: {tool_use if tools and present, else default} unless a name was asked for.
  const Entry* entry = nullptr;
  if (!chosen_.empty()) entry = &templates_.at(chosen_);
  else if (!tools.is_null() && templates_.count("tool_use")) entry = &templates_.at("tool_use");
  else if (templates_.count("default")) entry = &templates_.at("default");
  else entry = &templates_.begin()->second;

  // Same variables as transformers' render: special tokens, then the call's kwargs, then
  // messages/tools/documents/add_generation_prompt.
  std::unordered_map<std::string, jinja::Value> vars;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it)
    vars[it.key()] = jinja::Value::from_json(it.value());
  if (extra_vars.is_object())
    for (auto it = extra_vars.begin(); it != extra_vars.end(); ++it) vars[it.key()] = jinja::Value::from_json(it.value());
  vars["messages"] = jinja::Value::from_json(messages);
  vars["tools"] = jinja::Value::from_json(tools);
  if (!vars.count("documents")) vars["documents"] = jinja::Value::none();
  vars["add_generation_prompt"] = jinja::Value::boolean(add_generation_prompt);
  return entry->tmpl->render(vars, now);
}

}  // namespace gale
