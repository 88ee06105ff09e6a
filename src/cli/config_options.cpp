#include "cli/config_options.h"

#include "api/config_file.h"
#include "core/error.h"

namespace gale::cli {

void add_config_option(CLI::App* sub, std::string& path) {
  sub->add_option("--config", path,
                  "TOML file of flag values (what `gale tune` writes as gale.toml): keys are the long flag names "
                  "with '_' or '-' (kv_cache_dtype = \"fp8\"); flags on the command line win over the file")
      ->type_name("FILE");
}

void apply_config_file(CLI::App* sub, const std::string& path) {
  if (path.empty()) return;
  for (const ConfigEntry& e : read_toml_config(path)) {
    const std::string where = path + ":" + std::to_string(e.line) + ": ";
    std::string flag = "--" + e.key;
    for (char& c : flag)
      if (c == '_') c = '-';
    CLI::Option* opt = flag == "--config" || flag == "--help" ? nullptr : sub->get_option_no_throw(flag);
    if (!opt || opt->get_lnames().empty())
      throw Error(where + "unknown key '" + e.key + "' (gale " + sub->get_name() + " has no " + flag + ")");
    if (opt->count() > 0) continue;  // the command line wins
    const bool is_flag = opt->get_expected_min() == 0;
    if (is_flag && !e.is_bool)
      throw Error(where + "'" + e.key + "' is a switch: its value must be true or false");
    if (!is_flag && e.is_bool)
      throw Error(where + "'" + e.key + "' takes a value, not true / false");
    if (is_flag && e.value == "false") continue;  // a switch's default is off
    try {
      opt->add_result(e.value);
      opt->run_callback();
    } catch (const CLI::Error& err) {
      throw Error(where + "'" + e.key + "': " + err.what());
    }
  }
}

}  // namespace gale::cli
