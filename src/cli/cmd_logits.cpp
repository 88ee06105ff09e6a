// gale logits: the model's logits for a sequence of ids (for checking against a reference).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "model/model_loader.h"
#include "runtime/sampler.h"

namespace gale::cli {
namespace {

struct LogitsOptions {
  ModelOptions model;
  std::string ids;
  bool all_positions = false;
  bool json = false;
};

CommandRegistrar reg{20, [](CLI::App& root) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* sub = root.add_subcommand("logits", "Print the logits of the last position (and argmax of every position)");
  add_model_options(sub, o->model);
  sub->add_option("--ids", o->ids, "Token ids, comma-separated")->required();
  sub->add_flag("--all-positions", o->all_positions, "Also report the argmax id of every position");
  sub->add_flag("--json", o->json, "JSON output {\"last\": [...], \"argmax\": [...]}");
  sub->callback([o] {
    std::vector<int32_t> ids = parse_id_list(o->ids);
    if (ids.empty()) throw Error("--ids is empty");
    LoadedModel lm = load_model(resolve_model(o->model), backend_options(o->model), load_options(o->model));
    Transformer& m = *lm.model;
    const int64_t V = m.config().vocab_size, bs = 16;
    const int64_t nb = (int64_t(ids.size()) + bs - 1) / bs;
    KVCache kv(m.config(), nb, bs, m.kv_format(), &m.backend());
    std::vector<int32_t> table(static_cast<size_t>(nb));
    for (int64_t i = 0; i < nb; ++i) table[size_t(i)] = int32_t(i);
    SeqStep s{ids, 0, table, o->all_positions ? SeqStep::Logits::All : SeqStep::Logits::Last};
    std::vector<float> logits;
    m.forward({&s, 1}, kv, logits);
    const int64_t rows = int64_t(logits.size()) / V;
    std::span<const float> last(logits.data() + (rows - 1) * V, size_t(V));
    nlohmann::json j;
    j["last"] = std::vector<float>(last.begin(), last.end());
    if (o->all_positions) {
      std::vector<int32_t> am;
      for (int64_t r = 0; r < rows; ++r) am.push_back(argmax({logits.data() + r * V, size_t(V)}));
      j["argmax"] = am;
    }
    if (o->json) {
      std::printf("%s\n", j.dump().c_str());
    } else {
      int32_t best = argmax(last);
      std::printf("last position: argmax %d (logit %.6g)\n", best, double(last[size_t(best)]));
      if (o->all_positions) std::printf("argmax per position: %s\n", j["argmax"].dump().c_str());
    }
  });
}};

}  // namespace
}  // namespace gale::cli
