#include "cli/tune_store.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "core/error.h"

namespace gale::cli {

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("cannot write " + tmp);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                  ::fsync(fileno(f)) == 0;
  if (std::fclose(f) != 0 || !ok) throw Error("cannot write " + tmp);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

TunePointStore::TunePointStore(std::string path, nlohmann::json settings)
    : path_(std::move(path)), settings_(std::move(settings)) {}

void TunePointStore::load() {
  std::ifstream in(path_);
  if (!in) return;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || j.value("settings", nlohmann::json()) != settings_) {
      ++dropped_;
      continue;
    }
    try {
      TunePoint p = tune_point_from_json(j);
      const std::string key = p.config.key();
      if (!points_.count(key)) order_.push_back(key);
      points_[key] = std::move(p);
    } catch (const Error&) {
      ++dropped_;
    }
  }
}

const TunePoint* TunePointStore::find(const std::string& key) const {
  auto it = points_.find(key);
  return it == points_.end() ? nullptr : &it->second;
}

void TunePointStore::add(const TunePoint& p) {
  const std::string key = p.config.key();
  if (!points_.count(key)) order_.push_back(key);
  points_[key] = p;
  save();
}

std::vector<TunePoint> TunePointStore::points() const {
  std::vector<TunePoint> out;
  for (const std::string& k : order_) out.push_back(points_.at(k));
  return out;
}

void TunePointStore::save() const {
  std::string text;
  for (const std::string& k : order_) {
    nlohmann::json j = tune_point_json(points_.at(k));
    j["settings"] = settings_;
    text += j.dump() + "\n";
  }
  write_file_atomic(path_, text);
}

}  // namespace gale::cli
