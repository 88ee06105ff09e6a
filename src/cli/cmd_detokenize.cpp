// gale detokenize: token ids -> text with the model folder's tokenizer.json.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "tokenizer/tokenizer.h"

namespace gale::cli {
namespace {

struct DetokenizeOptions {
  std::string model, ids;
  bool skip_special = false, json = false;
};

CommandRegistrar reg{51, [](CLI::App& root) {
  auto o = std::make_shared<DetokenizeOptions>();
  CLI::App* sub = root.add_subcommand("detokenize", "Decode token ids into text (Hugging Face tokenizer.json)");
  sub->add_option("-m,--model", o->model, "Folder holding tokenizer.json")->required();
  sub->add_option("--ids", o->ids, "Comma-separated token ids, e.g. 1,2,3 (\"\" for none)")->required();
  sub->add_flag("--skip-special", o->skip_special, "Leave special tokens out of the text");
  sub->add_flag("--json", o->json, "JSON output: {\"text\": \"...\"}");
  sub->callback([o] {
    std::vector<int32_t> ids = parse_id_list(o->ids);
    auto tok = Tokenizer::load(o->model);
    std::string text = tok->decode(ids, o->skip_special);
    if (o->json) {
      nlohmann::json j{{"text", text}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      return;
    }
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  });
}};

}  // namespace
}  // namespace gale::cli
