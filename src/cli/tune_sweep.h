// `gale tune`'s search: which configurations to measure, within a time budget.
//
// The full grid (4 weight formats x 3 KV dtypes x 3 prunings x 4 proposers x batch limits) is
// hundreds of points; at several seconds each that is far past a 10-minute budget on a CPU. So
// the sweep is greedy, one axis at a time from the best configuration so far: start from the
// unmodified model, try every value of the first axis with the others fixed, keep the value whose
// point tune_choose prefers (within --max-quality-loss and --memory-limit), go on to the next
// axis. Axes in order: weight format, KV cache dtype, pruning, speculation, max_num_seqs,
// max_num_batched_tokens: the lossy choices first (they change what is cheap later), the
// scheduling limits last (they depend on the step time the others set). The axes interact little
// on this engine (quantization, pruning and KV dtype shrink different bytes), which is what makes
// one pass of coordinate descent a fair approximation; every measured point, not only the path,
// goes into the Pareto front and the final choice.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cli/tune_measure.h"
#include "cli/tune_store.h"

namespace gale::cli {

struct TuneAxis {
  std::string name;
  std::vector<std::function<void(TuneConfig&)>> values;  // each sets the axis in a copy of the best config
};

// The default axes for a workload. has_draft: a draft model can propose.
std::vector<TuneAxis> tune_axes(const TuneWorkload& w, bool has_draft);

struct TuneSweepOptions {
  std::string model_dir;
  std::string out_dir;                 // pruned copies go under OUT/pruned/
  TuneLimits limits;
  double budget_s = 480;               // no point starts when it would end past this
  int64_t max_points = 0;              // stop after this many points on the path (0: no limit)
  std::vector<int32_t> calib_tokens;   // pruning's calibration text
  bool quiet = false;                  // no progress on stderr
};

struct TuneSweepResult {
  std::vector<TunePoint> points;       // every point measured under these settings (this run's and earlier ones)
  std::optional<size_t> chosen;        // index into points
  int64_t measured_now = 0, reused = 0;
  std::vector<std::string> failed;     // "KEY: why" for configurations that could not run
  bool stopped_by_budget = false, stopped_by_max_points = false;
  double elapsed_s = 0;
};

TuneSweepResult run_tune_sweep(const TuneSweepOptions& o, TuneMeter& meter, TunePointStore& store);

// The folder of a pruned variant ("ffn-channels:0.25" -> OUT/pruned/ffn-channels-0.25), written
// by `gale prune`'s library function the first time it is needed and reused after (on resume too).
std::string pruned_model_dir(const std::string& out_dir, const std::string& prune);

}  // namespace gale::cli
