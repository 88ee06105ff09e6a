// Reading config.json values with one clear error per bad key: typed getters that name the
// file and key, and the size limits every count is checked against before anything is sized
// from it. Shared by the generic config parser (model_config.cpp) and the architecture files
// (model/arch/), which read their own keys through it.
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace gale {

// Upper bounds on config.json's sizes. The largest released models have ~130 layers, 128
// heads, hidden 25,600, head_dim 512, 384 experts and ~260k vocab entries; these leave room
// for ten times that and keep every product of them far from int64 overflow. The checkpoint
// check (loader/checkpoint_check.h) then ties each count to real tensors.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHidden = int64_t(1) << 20;
constexpr int64_t kMaxIntermediate = int64_t(1) << 22;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxHeadDim = 8192;
constexpr int64_t kMaxVocab = int64_t(1) << 31;
constexpr int64_t kMaxExperts = 16384;
constexpr int64_t kMaxPositions = int64_t(1) << 40;

struct ConfigReader {
  const nlohmann::json& j;
  std::string what;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw Error(what + ": '" + key + "' " + why);
  }
  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int64_t i64(const char* k) const {
    if (!has(k)) fail(k, "is missing");
    const nlohmann::json& v = j[k];
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) fail(k, "is out of range");
    if (v.is_number_integer()) return v.get<int64_t>();
    // 1e9 is integral, 2.5 is not; converting a double past int64 would be undefined, and
    // past 2^53 it no longer names one integer.
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::fabs(d) > 9007199254740992.0) fail(k, "is out of range");
      if (d == std::trunc(d)) return int64_t(d);
    }
    fail(k, "must be an integer");
  }
  int64_t i64_or(const char* k, int64_t d) const { return has(k) ? i64(k) : d; }
  double f64(const char* k) const {
    if (!has(k)) fail(k, "is missing");
    if (!j[k].is_number()) fail(k, "must be a number");
    return j[k].get<double>();
  }
  double f64_or(const char* k, double d) const { return has(k) ? f64(k) : d; }
  bool boolean_or(const char* k, bool d) const {
    if (!has(k)) return d;
    if (!j[k].is_boolean()) fail(k, "must be true or false");
    return j[k].get<bool>();
  }
  // A positive integer at most `max` (the limits below: far past any real model, small enough
  // that nothing sized from them before the checkpoint is read can be large).
  int64_t positive(const char* k, int64_t max = int64_t(1) << 31) const {
    int64_t v = i64(k);
    if (v <= 0) fail(k, "must be a positive integer (got " + std::to_string(v) + ")");
    if (v > max) fail(k, "is " + std::to_string(v) + ", more than the " + std::to_string(max) + " Gale accepts");
    return v;
  }
  int64_t non_negative_or(const char* k, int64_t d, int64_t max) const {
    int64_t v = i64_or(k, d);
    if (v < 0 || v > max) fail(k, "must be in [0, " + std::to_string(max) + "] (got " + std::to_string(v) + ")");
    return v;
  }
};

}  // namespace gale
