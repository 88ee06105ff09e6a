// gale chat-template: render a model's chat template over a conversation file.
//   gale chat-template -m DIR --messages FILE.json [--add-generation-prompt]
//                      [--var key=value ...] [--tools FILE.json] [--template NAME] [--json]
// --var values are JSON when they parse as JSON (true, 3, "x", {...}), else plain strings.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/command.h"
#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/chat_template.h"

namespace gale::cli {
namespace {

nlohmann::ordered_json read_json(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(std::string(what) + ": cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  check_json_depth(text, std::string(what) + ": " + path);  // the template walks it recursively
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string(what) + ": " + path + ": invalid JSON: " + e.what());
  }
}

struct Opts {
  std::string model_dir, messages_file, tools_file, name;
  std::vector<std::string> vars;
  bool add_generation_prompt = false;
  bool json = false;
};

void run(const Opts& o) {
  auto messages = read_json(o.messages_file, "--messages");
  if (!messages.is_array()) throw Error("--messages: " + o.messages_file + " must hold a JSON array of messages");
  nlohmann::ordered_json tools = nullptr;
  if (!o.tools_file.empty()) {
    tools = read_json(o.tools_file, "--tools");
    if (!tools.is_array()) throw Error("--tools: " + o.tools_file + " must hold a JSON array");
  }
  auto extra = nlohmann::ordered_json::object();
  for (const auto& kv : o.vars) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--var: expected key=value, got '" + kv + "'");
    std::string key = kv.substr(0, eq), val = kv.substr(eq + 1);
    auto parsed = nlohmann::ordered_json::parse(val, nullptr, false);
    extra[key] = parsed.is_discarded() ? nlohmann::ordered_json(val) : parsed;
  }
  auto tmpl = ChatTemplate::load(o.model_dir, o.name);
  std::string text = tmpl.render(messages, tools, o.add_generation_prompt, extra);
  if (o.json) {
    nlohmann::ordered_json out = {{"text", text}};
    std::string s = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
}

CommandRegistrar reg{52, [](CLI::App& root) {
  auto o = std::make_shared<Opts>();
  auto* sub = root.add_subcommand("chat-template", "Render a model's chat template over a conversation (JSON messages)");
  sub->add_option("-m,--model", o->model_dir, "Model folder (chat_template.jinja or tokenizer_config.json)")->required();
  sub->add_option("--messages", o->messages_file, "JSON file: array of {role, content, ...} messages")->required();
  sub->add_flag("--add-generation-prompt", o->add_generation_prompt, "Append the assistant turn header");
  sub->add_option("--var", o->vars, "Template variable key=value (value parsed as JSON when valid)");
  sub->add_option("--tools", o->tools_file, "JSON file: array of tool definitions");
  sub->add_option("--template", o->name, "Named template to use (when tokenizer_config.json has several)");
  sub->add_flag("--json", o->json, "Print {\"text\": ...} instead of the raw text");
  sub->callback([o] { run(*o); });
}};

}  // namespace
}  // namespace gale::cli
