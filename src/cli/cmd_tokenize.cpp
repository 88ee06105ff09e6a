// gale tokenize: text -> token ids with the model folder's tokenizer.json.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct TokenizeOptions {
  std::string model, text;
  bool no_special = false, json = false;
};

CommandRegistrar reg{50, [](CLI::App& root) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* sub = root.add_subcommand("tokenize", "Encode text into token ids (Hugging Face tokenizer.json)");
  sub->add_option("-m,--model", o->model, "Folder holding tokenizer.json")->required();
  sub->add_option("--text", o->text, "Text to encode")->required();
  sub->add_flag("--no-special", o->no_special, "Do not add the post-processor's special tokens (BOS/EOS)");
  sub->add_flag("--json", o->json, "JSON output: {\"ids\": [...]}");
  sub->callback([o] {
    auto tok = Tokenizer::load(o->model);
    std::vector<int32_t> ids = tok->encode(o->text, !o->no_special);
    if (o->json) {
      std::printf("%s\n", nlohmann::json{{"ids", ids}}.dump().c_str());
      return;
    }
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
  });
}};

}  // namespace
}  // namespace gale::cli
