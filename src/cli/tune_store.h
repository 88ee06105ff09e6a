// `gale tune`'s resume file, OUT/points.jsonl: one JSON line per measured point, each stamped with
// the settings it was measured under. The whole file is rewritten after every point (a temporary
// file, flushed, renamed over it), so an interrupted run leaves either the old file or the new
// one, never a torn line; rerunning with the same --out reuses every point whose settings match.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/tune_measure.h"

namespace gale::cli {

// Writes text to path through path.tmp and a rename; throws gale::Error on failure.
void write_file_atomic(const std::string& path, const std::string& text);

class TunePointStore {
 public:
  // settings: what makes two measurements comparable (model, workload, evaluation text, threads...).
  TunePointStore(std::string path, nlohmann::json settings);
  // Reads the file if it exists: the points measured under the same settings, by key. Lines that
  // are not points, or were measured under other settings, are dropped (and counted).
  void load();
  int64_t dropped() const { return dropped_; }
  const TunePoint* find(const std::string& key) const;
  // Adds (or replaces) a point and rewrites the file.
  void add(const TunePoint& p);
  // Every point, in the order first measured.
  std::vector<TunePoint> points() const;

 private:
  void save() const;
  std::string path_;
  nlohmann::json settings_;
  std::vector<std::string> order_;
  std::map<std::string, TunePoint> points_;
  int64_t dropped_ = 0;
};

}  // namespace gale::cli
