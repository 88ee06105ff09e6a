// Prometheus metrics of the server, rendered in the text exposition format (version 0.0.4).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace gale::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Appends "# TYPE" and the _bucket/_sum/_count lines.
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;      // upper bounds, ascending; +Inf implied
  std::vector<uint64_t> counts_;    // per bucket (not cumulative)
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // outcome: stop, length, abort (client gone), timeout, error (engine rejected), rejected (429)
  void count_request(const std::string& outcome);
  void count_http(int status);
  Histogram ttft, tpot, e2e;        // seconds
  // Engine snapshot + server gauges -> text.
  std::string render(const EngineStats& s, int64_t in_flight, int64_t open_connections) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> requests_;
  std::map<int, uint64_t> http_;
};

// Resident set size of this process in bytes (from /proc/self/statm), 0 when unknown.
int64_t resident_memory_bytes();

}  // namespace gale::serve
